//! What `check-config` and the start-up line show of each setting: its effective value,
//! secrets redacted.

use std::path::PathBuf;

use super::Config;
use crate::dedup::shared::RedisSettings;
use crate::observe::logging::LogFormat;
use crate::pipeline::limit::RateLimit;
use crate::respond::Lang;
use crate::upstream::UpstreamHeaders;
use crate::util::text::shown_url;
use crate::vars::*;

/// Every shown setting, in `check-config`'s order. Variables that only steer another
/// (a burst beside its rate, the OTLP base URL and protocol) are shown in that one's line.
pub(super) fn describe(c: &Config) -> Vec<(&'static str, String)> {
    let (server, pipeline, upstream) = (&c.server, &c.pipeline, &c.upstream);
    let redis = c.dedup.redis.as_ref();
    let openapi = c.openapi.as_ref();
    let traced = |f: fn(&crate::observe::otlp::Traces) -> String| {
        c.traces
            .as_ref()
            .map_or_else(|| "unused: traces are off".to_owned(), f)
    };
    let redis_shown = |f: fn(&RedisSettings) -> String| redis.map_or_else(|| unused(REDIS_URL), f);
    vec![
        (LISTEN, server.listen.to_string()),
        (ADMIN_LISTEN, server.admin_listen.to_string()),
        (CALLBACK_PATH, pipeline.path.clone()),
        (UPSTREAM_URL, shown_url(&upstream.url)),
        (
            UPSTREAM_TIMEOUT_MS,
            upstream.timeout.as_millis().to_string(),
        ),
        (
            ANSWER_WITHIN_MS,
            pipeline.answer_within.as_millis().to_string(),
        ),
        (
            LATE_VERDICT_MS,
            pipeline.late_verdict.as_millis().to_string(),
        ),
        (UPSTREAM_HEADERS, shown_headers(&upstream.headers)),
        (UPSTREAM_CA_FILE, shown_path(upstream.ca_file.as_ref())),
        (
            UPSTREAM_CLIENT_CERT,
            shown_path(upstream.client.as_ref().map(|i| &i.cert)),
        ),
        (
            UPSTREAM_CLIENT_KEY,
            shown_path(upstream.client.as_ref().map(|i| &i.key)),
        ),
        (
            UPSTREAM_OK,
            upstream
                .ok_rule
                .as_ref()
                .map_or_else(none, ToString::to_string),
        ),
        (RETRY_503, upstream.retry_503.to_string()),
        (
            CONNECT_RETRY_MS,
            upstream.connect_retry.as_millis().to_string(),
        ),
        (TOKEN, format!("<redacted: {}>", c.callback.tokens.len())),
        (
            KEY,
            match c.callback.keys.len() {
                0 => none(),
                n => format!("<redacted: {n}>"),
            },
        ),
        (ALLOW_PLAINTEXT, c.callback.allow_plaintext.to_string()),
        (TLS_CERT, shown_path(server.tls.as_ref().map(|t| &t.cert))),
        (TLS_KEY, shown_path(server.tls.as_ref().map(|t| &t.key))),
        (MAX_BODY_BYTES, pipeline.max_body.to_string()),
        (RATE_LIMIT_RPS, shown_limit(pipeline.rate_limit)),
        (USER_RATE_LIMIT_RPS, shown_limit(pipeline.user_rate_limit)),
        (
            DEDUP_TTL_SECS,
            c.dedup.ttl.map_or_else(off, |d| d.as_secs().to_string()),
        ),
        (
            MESSAGE_ID_AS_STRING,
            c.callback.forward.message_id_as_string.to_string(),
        ),
        (
            LANG,
            match c.lang {
                Lang::Zh => "zh".to_owned(),
                Lang::En => "en".to_owned(),
            },
        ),
        (
            LOG_FORMAT,
            match c.log_format {
                LogFormat::Json => "json".to_owned(),
                LogFormat::Text => "text".to_owned(),
            },
        ),
        (
            SHUTDOWN_GRACE_MS,
            server.shutdown_grace.as_millis().to_string(),
        ),
        (MAX_CONNECTIONS, server.max_connections.to_string()),
        (
            WORKERS,
            server
                .workers
                .map_or_else(|| "auto".to_owned(), |n| n.to_string()),
        ),
        (
            OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
            c.traces
                .as_ref()
                .map_or_else(off, |t| shown_url(&t.endpoint)),
        ),
        (OTEL_SERVICE_NAME, traced(|t| t.service_name.clone())),
        (OTEL_TRACES_SAMPLER, traced(|t| t.sampler.clone())),
        (
            REDIS_URL,
            redis.map_or_else(none, |r| r.url.shown().to_owned()),
        ),
        (REDIS_PREFIX, redis_shown(|r| r.prefix.clone())),
        (
            REDIS_CA_FILE,
            match redis {
                Some(r) if r.url.is_tls() => r
                    .ca_file
                    .as_ref()
                    .map_or_else(|| "system roots".to_owned(), |p| p.display().to_string()),
                Some(_) => "unused: the Redis URL is not rediss://".to_owned(),
                None => unused(REDIS_URL),
            },
        ),
        (REDIS_FAILURE, redis_shown(|r| r.failure.label().to_owned())),
        (APP_ID, openapi.map_or_else(none, |o| o.app_id.clone())),
        (
            APP_SECRET,
            openapi.map_or_else(none, |_| "<redacted>".to_owned()),
        ),
        (
            OPENAPI_URL,
            openapi.map_or_else(|| unused(APP_ID), |o| shown_url(&o.base)),
        ),
        (
            OPENAPI_CA_FILE,
            openapi.map_or_else(
                || unused(APP_ID),
                |o| {
                    o.ca_file
                        .as_ref()
                        .map_or_else(|| "system roots".to_owned(), |p| p.display().to_string())
                },
            ),
        ),
    ]
}

/// A setting given no value and having no default.
fn none() -> String {
    "not set".to_owned()
}

/// A feature turned off, by its variable or by leaving it unset.
fn off() -> String {
    "off".to_owned()
}

/// A setting that only matters once `needed` is set.
fn unused(needed: &str) -> String {
    format!("unused: {needed} is not set")
}

fn shown_path(path: Option<&PathBuf>) -> String {
    path.map_or_else(none, |p| p.display().to_string())
}

fn shown_limit(limit: Option<RateLimit>) -> String {
    limit.map_or_else(off, |l| format!("{}/s burst {}", l.per_second, l.burst))
}

/// Header names only: the values are credentials.
fn shown_headers(headers: &UpstreamHeaders) -> String {
    if headers.0.is_empty() {
        return none();
    }
    // As they go out: spelled as written.
    let names: Vec<String> = headers
        .1
        .iter()
        .map(|n| format!("{n}=<redacted>"))
        .collect();
    names.join(",")
}
