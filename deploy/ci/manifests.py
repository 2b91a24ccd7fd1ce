"""Helpers for deploy/ci/check.sh: turn rendered manifests into inputs for other tools.

  manifests.py json RENDERED OUT             every object, as a JSON array
  manifests.py rules RENDERED OUT            the PrometheusRule's groups, as a promtool rule file
  manifests.py dashboard-rules DASHBOARD OUT every dashboard query as a recording rule, so
                                             promtool checks its PromQL
  manifests.py pod RENDERED SECRETS DIR      the feishu-gate container's environment (ConfigMap
                                             plus env) as DIR/env, and each Secret volume as a
                                             directory DIR/<volume> holding the Secret's keys
                                             (from SECRETS, a file of example Secrets); prints
                                             "DIR/<volume>:<mountPath>" per mount
"""

import json
import os
import sys

import yaml


def block_strings(dumper, text):
    # Multi-line PromQL stays readable in the extracted file, so promtool's line numbers help.
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


yaml.SafeDumper.add_representer(str, block_strings)


def docs(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def one(objects, kind):
    found = [o for o in objects if o["kind"] == kind]
    if len(found) != 1:
        sys.exit(f"expected one {kind}, found {len(found)}")
    return found[0]


def to_json(rendered, out):
    with open(out, "w", encoding="utf-8") as f:
        json.dump(docs(rendered), f)


def rules(rendered, out):
    rule = one(docs(rendered), "PrometheusRule")
    with open(out, "w", encoding="utf-8") as f:
        yaml.safe_dump({"groups": rule["spec"]["groups"]}, f, sort_keys=False)


def dashboard_rules(dashboard, out):
    with open(dashboard, encoding="utf-8") as f:
        board = json.load(f)
    # Grafana's variables, replaced by what Grafana would send.
    values = {"$__rate_interval": "2m", "$__interval": "30s", "$__range": "1h", "$namespace": ".*", "$job": "feishu-gate"}
    records = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in values.items():
                expr = expr.replace(var, value)
            if "$" in expr:
                sys.exit(f"panel {panel['title']!r}: unknown variable in {target['expr']!r}")
            records.append({"record": f"dashboard:panel_{panel['id']}:{target['refId']}", "expr": expr})
    if not records:
        sys.exit("the dashboard has no queries")
    with open(out, "w", encoding="utf-8") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}, f, sort_keys=False)


def pod(rendered, secrets, out):
    objects = docs(rendered)
    deployment = one(objects, "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    container = next(c for c in spec["containers"] if c["name"] == "feishu-gate")
    env = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        cm = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == name)
        env.update(cm["data"])
    for var in container.get("env", []):
        env[var["name"]] = var["value"]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "env"), "w", encoding="utf-8") as f:
        for k, v in env.items():
            f.write(f"{k}={v}\n")

    examples = {o["metadata"]["name"]: o for o in docs(secrets) if o["kind"] == "Secret"}
    volumes = {v["name"]: v for v in spec["volumes"]}
    for mount in container.get("volumeMounts", []):
        secret = volumes[mount["name"]].get("secret")
        if secret is None:
            continue
        # An overlay's secretGenerator adds a hash to the name.
        name = secret["secretName"]
        example = examples.get(name) or next(
            (s for n, s in examples.items() if name.startswith(n + "-")), None
        )
        if example is None:
            sys.exit(f"no example for Secret {name}")
        directory = os.path.join(out, mount["name"])
        os.makedirs(directory, exist_ok=True)
        for key, value in example.get("stringData", {}).items():
            with open(os.path.join(directory, key), "w", encoding="utf-8") as f:
                f.write(value)
        print(f"{directory}:{mount['mountPath']}")


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"json": to_json, "rules": rules, "dashboard-rules": dashboard_rules, "pod": pod}[command](*args)
