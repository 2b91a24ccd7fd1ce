//! `UPSTREAM_URL` and `UPSTREAM_HEADERS`: what is accepted, and problems that never
//! echo a credential.

use super::*;

#[test]
fn upstream_url_must_be_http_or_https_without_credentials() {
    for bad in [
        "ftp://x/",
        "127.0.0.1:80",
        "http://user:pw@host/",
        "not a url",
    ] {
        let e = errors(&[(UPSTREAM_URL, bad)]);
        assert!(e[0].starts_with(UPSTREAM_URL), "{bad}: {e:?}");
        assert!(!e[0].contains("pw"), "{e:?}");
    }
    assert!(with(&[(UPSTREAM_URL, "https://legacy.internal:8443/cb?x=1")]).is_ok());
}

#[test]
fn upstream_headers_are_parsed_and_redacted() {
    let c = with(&[(
        UPSTREAM_HEADERS,
        "Authorization=Bearer%20s3cr3t, X-Tenant=a%2Cb",
    )])
    .unwrap()
    .config;
    let h = &c.upstream.headers.0;
    assert_eq!(h[0].0, "authorization");
    assert_eq!(h[0].1, "Bearer s3cr3t");
    assert_eq!(h[1].1, "a,b");
    let shown = format!("{c:?}{:?}", c.describe());
    assert!(
        !shown.contains("s3cr3t") && !shown.contains("tok\""),
        "{shown}"
    );
    let e = errors(&[(UPSTREAM_HEADERS, "Host=x,bad header=1,X-Ok=zz")]);
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e.iter().all(|l| !l.contains("zz")), "{e:?}");
    // A credential pasted without a name is not echoed either.
    let e = errors(&[(UPSTREAM_HEADERS, "X-Ok=1,s3cr3t-t0ken,Bearer c2VjcmV0==")]);
    assert_eq!(
        e,
        vec![
            format!("{UPSTREAM_HEADERS}: entry 2 is not name=value (or Name: value)"),
            format!("{UPSTREAM_HEADERS}: entry 3 does not start with a header name"),
        ]
    );
}

#[test]
fn upstream_headers_may_be_written_as_curl_writes_them() {
    let c = with(&[(
        UPSTREAM_HEADERS,
        "Authorization: Basic dXNlcjpwYXNz==, X-Time=12:30, X-Tenant:acme",
    )])
    .unwrap()
    .config;
    let h: Vec<(&str, &[u8])> = c
        .upstream
        .headers
        .0
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect();
    assert_eq!(
        h,
        vec![
            ("authorization", &b"Basic dXNlcjpwYXNz=="[..]),
            ("x-time", b"12:30"),
            ("x-tenant", b"acme"),
        ]
    );
}

#[test]
fn upstream_header_mistakes_are_named_without_their_values() {
    for (value, problem) in [
        (
            "X-A=s3cr3t;X-B=2",
            "the value of x-a holds a ';': separate headers with ',', and write a ';' \
             that belongs to a value as %3B",
        ),
        ("X-A=1,x-a=s3cr3t", "x-a is given twice"),
        (
            "X-A=s3cr3t%zz",
            "the value of x-a has a % not followed by two hex digits (write a literal % as %25)",
        ),
        (
            "X-A=s3cr3t%0A",
            "the value of x-a holds a character a header cannot carry \
             (a line break or other control character)",
        ),
    ] {
        assert_eq!(
            errors(&[(UPSTREAM_HEADERS, value)]),
            vec![format!("{UPSTREAM_HEADERS}: {problem}")],
            "{value}"
        );
    }
    let c = with(&[(UPSTREAM_HEADERS, "Cookie=a=1%3B b=2,X-Pct=100%25")])
        .unwrap()
        .config;
    assert_eq!(c.upstream.headers.0[0].1, "a=1; b=2");
    assert_eq!(c.upstream.headers.0[1].1, "100%");
}

#[test]
fn upstream_url_mistakes_get_their_own_message() {
    for (url, problem) in [
        (
            "http://127.0.0.1:80800/",
            "has a port out of range: it must be from 1 to 65535",
        ),
        (
            "http://[::1]:65536/",
            "has a port out of range: it must be from 1 to 65535",
        ),
        (
            "http://127.0.0.1:0/",
            "has a port out of range: it must be from 1 to 65535",
        ),
        (
            "127.0.0.1:8080/approve",
            "has no scheme: write it in full, e.g. http://127.0.0.1:8080/approve",
        ),
        (
            "legacy.internal/approve",
            "has no scheme: write it in full, e.g. http://127.0.0.1:8080/approve",
        ),
        (
            "ftp://legacy/approve",
            "must start with http:// or https://",
        ),
    ] {
        assert_eq!(
            errors(&[(UPSTREAM_URL, url)]),
            vec![format!("{UPSTREAM_URL}: {problem}")],
            "{url}"
        );
    }
    assert!(with(&[(UPSTREAM_URL, "http://[::1]:65535/")]).is_ok());
}
