//! Span export over OTLP/HTTP with the OpenTelemetry SDK, when
//! OpenTelemetry's standard variables ask for it (see
//! [`Traces`]): a server span per callback, and a client span,
//! its child, for the exchange with the legacy system.
//!
//! Spans carry the facts of the callback's log line that identify it and say
//! how it went: never the token, the key, the body or `UPSTREAM_HEADERS`.
//! Without an exporter none of this runs: the gateway holds no provider and
//! a callback builds no span.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, Span};

use crate::callback::Summary;
use crate::observe::trace::Trace;
use crate::outcome::Outcome;
use crate::util::https::{self, Connector, Versions};
use crate::util::text::bounded;

/// A collector that does not answer within this is given up on for the batch.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of a collector's answer that is read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The exporter and the tracer callbacks' spans are made with.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    /// `server.address` and `server.port` of the legacy system, for client spans.
    upstream: Vec<KeyValue>,
}

impl Telemetry {
    /// Starts the exporter. Must run inside the runtime its requests are to
    /// be sent on, which must outlive [`Self::shutdown`].
    pub fn start(traces: &Traces, upstream: &http::Uri) -> Result<Self, String> {
        let client = OtlpClient::new(traces.endpoint.scheme_str() == Some("https"))?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_endpoint(traces.endpoint.to_string())
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .build()
            .map_err(|e| format!("cannot build the OTLP exporter: {e}"))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                Resource::builder()
                    .with_service_name(traces.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer(env!("CARGO_PKG_NAME"));
        let mut attributes = Vec::with_capacity(2);
        if let Some(host) = upstream.host() {
            attributes.push(KeyValue::new("server.address", host.to_owned()));
        }
        let default_port = if upstream.scheme_str() == Some("https") {
            443
        } else {
            80
        };
        let port = upstream.port_u16().unwrap_or(default_port);
        attributes.push(KeyValue::new("server.port", i64::from(port)));
        Ok(Self {
            provider,
            tracer,
            upstream: attributes,
        })
    }

    /// Sends what is still queued and stops the exporter. Blocks: run it off
    /// the runtime that sends the requests.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "spans may have been lost at shutdown");
        }
    }

    /// The span of one verified callback since it `arrived`, the caller's span its parent
    /// if it sent one. The trace's ids and sampling become the span's, so the log line
    /// and the legacy system see the trace that is exported.
    pub fn callback(&self, trace: &mut Trace, arrived: SystemTime) -> CallbackSpan {
        let parent = match trace.parent {
            Some(parent) => Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from_bytes(trace.trace_id),
                SpanId::from_bytes(parent),
                if trace.sampled {
                    TraceFlags::SAMPLED
                } else {
                    TraceFlags::default()
                },
                true,
                trace
                    .tracestate
                    .as_ref()
                    .and_then(|s| s.to_str().ok())
                    .and_then(|s| s.parse::<TraceState>().ok())
                    .unwrap_or_default(),
            )),
            None => Context::new(),
        };
        let span = self
            .tracer
            .span_builder("callback")
            .with_kind(SpanKind::Server)
            .with_start_time(arrived)
            .start_with_context(&self.tracer, &parent);
        let context = span.span_context().clone();
        trace.trace_id = context.trace_id().to_bytes();
        trace.sampled = context.is_sampled();
        CallbackSpan { span, context }
    }

    /// The child span of the exchange with the legacy system, under the
    /// callback's span (its [`CallbackSpan::context`]); `trace` is what the
    /// request carries, so the legacy system's parent is this span.
    pub fn exchange(&self, callback: &SpanContext, trace: &mut Trace) -> ExchangeSpan {
        let parent = Context::new().with_remote_span_context(callback.clone());
        let span = self
            .tracer
            .span_builder("POST")
            .with_kind(SpanKind::Client)
            .with_attributes(
                [KeyValue::new("http.request.method", "POST")]
                    .into_iter()
                    .chain(self.upstream.iter().cloned()),
            )
            .start_with_context(&self.tracer, &parent);
        let context = span.span_context();
        trace.exchange_span = context.span_id().to_bytes();
        trace.sampled = context.is_sampled();
        ExchangeSpan(span)
    }
}

/// A callback's server span, ended with its answer.
#[derive(Debug)]
pub struct CallbackSpan {
    span: Span,
    context: SpanContext,
}

impl CallbackSpan {
    /// Who the span is, for a child made where the span itself cannot go (a
    /// delivery that may outlive the request).
    pub fn context(&self) -> SpanContext {
        self.context.clone()
    }

    /// Ends the span with what the callback came to.
    pub fn finish(
        mut self,
        outcome: &Outcome,
        status: StatusCode,
        request_id: &str,
        summary: Option<&Summary>,
        upstream_status: Option<StatusCode>,
    ) {
        if !self.span.is_recording() {
            return;
        }
        let mut attributes = vec![
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("http.response.status_code", i64::from(status.as_u16())),
            KeyValue::new("feishu_gate.outcome", outcome.label()),
            KeyValue::new("feishu_gate.request_id", request_id.to_owned()),
        ];
        if let Some(s) = summary {
            // The caller chose these, so they are cut as in the log line.
            let text = |value: &str| bounded(value).to_owned();
            attributes.push(KeyValue::new(
                "feishu.approval_code",
                text(s.approval_code()),
            ));
            attributes.push(KeyValue::new("feishu.action", text(s.action_type())));
            for (key, value) in [
                ("feishu.instance_id", s.instance_id()),
                ("feishu.task_id", s.task_id()),
                ("feishu.message_id", s.message_id()),
            ] {
                if let Some(value) = value {
                    attributes.push(KeyValue::new(key, text(value)));
                }
            }
        }
        if let Some(upstream) = upstream_status {
            attributes.push(KeyValue::new(
                "feishu_gate.upstream_status",
                i64::from(upstream.as_u16()),
            ));
        }
        self.span.set_attributes(attributes);
        // Failures of the gateway or the legacy system; a refusal of a bad
        // callback is the gateway doing its job.
        if outcome.is_upstream_failure() || *outcome == Outcome::Internal {
            self.span.set_status(Status::error(outcome.label()));
        }
        self.span.end();
    }
}

/// The exchange's client span, ended when the exchange is over.
#[derive(Debug)]
pub struct ExchangeSpan(Span);

impl ExchangeSpan {
    /// Ends the span with how the exchange came out, after `attempts` requests.
    pub fn finish(mut self, outcome: &Outcome, status: Option<StatusCode>, attempts: u32) {
        if !self.0.is_recording() {
            return;
        }
        let mut attributes = vec![
            KeyValue::new("feishu_gate.outcome", outcome.label()),
            KeyValue::new("feishu_gate.attempts", i64::from(attempts)),
        ];
        if let Some(status) = status {
            attributes.push(KeyValue::new(
                "http.response.status_code",
                i64::from(status.as_u16()),
            ));
        }
        self.0.set_attributes(attributes);
        if !matches!(outcome, Outcome::Delivered) {
            self.0.set_status(Status::error(outcome.label()));
        }
        self.0.end();
    }
}

/// The exporter's HTTP client: hyper with rustls, as the upstream client is,
/// so no other TLS stack is built in. The SDK exports from a thread of its
/// own, outside any runtime; each request is run on the runtime the
/// exporter was started in.
#[derive(Debug)]
struct OtlpClient {
    client: Client<Connector, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
}

impl OtlpClient {
    fn new(https: bool) -> Result<Self, String> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "the OTLP exporter must start inside the runtime".to_owned())?;
        let tls = https::client_config(https, None, None)
            .map_err(|(_, e)| format!("cannot load trust anchors for the OTLP exporter: {e}"))?;
        let connector = https::connector(tls, Versions::Http1, None);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self { client, runtime })
    }
}

#[async_trait::async_trait]
impl HttpClient for OtlpClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let exchange = async move {
            let response = client.request(request.map(Full::new)).await?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_ANSWER_BYTES).collect().await?;
            Ok::<_, HttpError>(Response::from_parts(parts, body.to_bytes()))
        };
        let bounded = async move {
            tokio::time::timeout(EXPORT_TIMEOUT, exchange)
                .await
                .map_err(|_| HttpError::from("the OTLP collector did not answer in time"))?
        };
        self.runtime.spawn(bounded).await?
    }
}

/// Span export over OTLP/HTTP, when OpenTelemetry's variables ask for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Traces {
    /// Where spans are POSTed, `/v1/traces` included.
    pub endpoint: Uri,
    pub service_name: String,
    /// `OTEL_TRACES_SAMPLER` as set, for `check-config`.
    pub sampler: String,
}
