// Validates the Prometheus Operator objects among rendered manifests (a JSON array, argv[2])
// against the CRD schemas that @kubernetes-models/prometheus-operator is generated from.
// Kubernetes kinds are kubernetes-validate's job; any other monitoring.coreos.com kind, or a
// missing ServiceMonitor or PrometheusRule, is an error.
import { readFileSync } from "node:fs";
import { PrometheusRule, ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

const models = { ServiceMonitor, PrometheusRule };
const objects = JSON.parse(readFileSync(process.argv[2], "utf8"));
const seen = new Set();
let errors = 0;
for (const object of objects) {
  if (!String(object.apiVersion).startsWith("monitoring.coreos.com/")) continue;
  const where = `${object.kind}/${object.metadata?.name}`;
  const Model = object.apiVersion === "monitoring.coreos.com/v1" && models[object.kind];
  if (!Model) {
    console.error(`ERROR ${where}: no schema for ${object.apiVersion}`);
    errors++;
    continue;
  }
  try {
    new Model(object).validate();
    seen.add(object.kind);
    console.log(`INFO ${where} passed against the ${object.apiVersion} CRD schema`);
  } catch (e) {
    console.error(`ERROR ${where}: ${e.message}`);
    errors++;
  }
}
for (const kind of Object.keys(models)) {
  if (!seen.has(kind)) {
    console.error(`ERROR no valid ${kind} in ${process.argv[2]}`);
    errors++;
  }
}
process.exit(errors ? 1 : 0);
