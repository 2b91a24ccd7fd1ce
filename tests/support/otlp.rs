//! A real OTLP/HTTP trace receiver for the tests: a hyper server on loopback that
//! decodes each `ExportTraceServiceRequest` POSTed to `/v1/traces` with the published
//! OpenTelemetry proto definitions (the `opentelemetry-proto` crate) and keeps every span
//! as a JSON object.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use prost::Message;
use tokio::net::TcpListener;

pub struct OtlpReceiver {
    pub port: u16,
    pub spans: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl OtlpReceiver {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = spans.clone();
        super::upstream::serve(listener, None, move |req| {
            let sink = sink.clone();
            async move {
                let path = req.uri().path().to_owned();
                let protobuf = req
                    .headers()
                    .get("content-type")
                    .is_some_and(|v| v == "application/x-protobuf");
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let status = if path != "/v1/traces" {
                    StatusCode::NOT_FOUND
                } else if !protobuf {
                    StatusCode::UNSUPPORTED_MEDIA_TYPE
                } else {
                    match ExportTraceServiceRequest::decode(body) {
                        Ok(request) => {
                            sink.lock().unwrap().extend(lines(&request));
                            StatusCode::OK
                        }
                        Err(_) => StatusCode::BAD_REQUEST,
                    }
                };
                let answer = ExportTraceServiceResponse::default().encode_to_vec();
                let mut response = Response::new(Full::new(Bytes::from(answer)));
                *response.status_mut() = status;
                response.headers_mut().insert(
                    "content-type",
                    http::HeaderValue::from_static("application/x-protobuf"),
                );
                Ok(response)
            }
        });
        OtlpReceiver { port, spans }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn spans_of(&self, service: &str) -> Vec<serde_json::Value> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s["service_name"] == service)
            .cloned()
            .collect()
    }
}

/// Every span of `request` as one JSON object, its resource's `service.name` beside it.
fn lines(request: &ExportTraceServiceRequest) -> Vec<serde_json::Value> {
    let mut lines = Vec::new();
    for resource_spans in &request.resource_spans {
        let resource = resource_spans
            .resource
            .as_ref()
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        for scope_spans in &resource_spans.scope_spans {
            let scope = scope_spans.scope.as_ref().map(|s| s.name.clone());
            for span in &scope_spans.spans {
                lines.push(serde_json::json!({
                    "service_name": resource.get("service.name"),
                    "scope": scope,
                    "trace_id": hex(&span.trace_id),
                    "span_id": hex(&span.span_id),
                    "parent_span_id": hex(&span.parent_span_id),
                    "name": span.name,
                    "kind": span.kind,
                    "start_ns": span.start_time_unix_nano,
                    "end_ns": span.end_time_unix_nano,
                    "status_code": span.status.as_ref().map_or(0, |s| s.code),
                    "attributes": attributes(&span.attributes),
                }));
            }
        }
    }
    lines
}

fn attributes(pairs: &[KeyValue]) -> serde_json::Map<String, serde_json::Value> {
    pairs
        .iter()
        .map(|pair| {
            let value = match pair.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => serde_json::json!(s),
                Some(any_value::Value::BoolValue(b)) => serde_json::json!(b),
                Some(any_value::Value::IntValue(i)) => serde_json::json!(i),
                Some(any_value::Value::DoubleValue(d)) => serde_json::json!(d),
                Some(other) => serde_json::json!(format!("{other:?}")),
                None => serde_json::Value::Null,
            };
            (pair.key.clone(), value)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
