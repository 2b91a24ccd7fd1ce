//! When a request may be sent again: only when it provably never reached the legacy
//! system, or a `503` asked for it with a `Retry-After` that fits. Pure, unit-tested.

use std::time::Duration;

use http::{HeaderMap, header};

/// The first pause before trying a request that was never sent again;
/// doubled for each further try, up to [`MAX_BACKOFF`]. A legacy container
/// that restarts takes seconds, and a refused connection costs the upstream
/// nothing, so the pauses stay short.
pub(super) const FIRST_BACKOFF: Duration = Duration::from_millis(50);

pub(super) const MAX_BACKOFF: Duration = Duration::from_millis(400);

/// A retry is only worth making with this much time left after its pause:
/// one that starts later would more likely end in a 504 (whose message says
/// the decision may have been recorded) than in an answer.
pub(super) const MIN_ATTEMPT: Duration = Duration::from_millis(250);

/// Why an attempt may be repeated.
pub(super) enum Retry {
    Unsent,
    /// What the upstream's `Retry-After` asked for.
    After(Duration),
}

/// Whether the upstream's TLS refused us. Under TLS 1.3 a server checks the
/// client's certificate after the client has finished its half of the
/// handshake, so a refused or missing client certificate surfaces as an alert
/// while the request is being sent rather than as a connect error; a server
/// that sends one of these alerts has processed no request.
pub(super) fn refused_by_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    use rustls::AlertDescription as A;
    let mut next = Some(e);
    while let Some(e) = next {
        // tokio-rustls hands rustls errors over inside an `io::Error`, whose
        // `source` skips the error it wraps.
        let wrapped = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        for candidate in [Some(e), wrapped].into_iter().flatten() {
            if let Some(rustls::Error::AlertReceived(alert)) = candidate.downcast_ref() {
                return matches!(
                    alert,
                    A::HandshakeFailure
                        | A::NoCertificate
                        | A::BadCertificate
                        | A::UnsupportedCertificate
                        | A::CertificateRevoked
                        | A::CertificateExpired
                        | A::CertificateUnknown
                        | A::UnknownCA
                        | A::AccessDenied
                        | A::CertificateRequired
                );
            }
        }
        next = e.source();
    }
    false
}

/// Whether a failure to connect is one a moment may mend: refused or reset
/// while connecting, as while a container restarts. A name that
/// does not resolve or a certificate that is refused will not mend itself
/// before the deadline, and trying again would only delay the answer.
pub(super) fn never_sent(e: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind as K;
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                K::ConnectionRefused | K::ConnectionReset | K::ConnectionAborted | K::NotConnected
            );
        }
        next = e.source();
    }
    false
}

/// A `Retry-After` in seconds (the form servers send with a `503`); the
/// HTTP-date form is not taken, since clocks between the hosts may differ.
pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    let secs: u64 = text.parse().ok()?;
    // Anything longer than the whole answer bound cannot fit anyway.
    (secs <= 10).then(|| Duration::from_secs(secs))
}

/// `base`, give or take half, so callbacks refused at the same moment do not
/// all come back at the same moment.
pub(super) fn jittered(base: Duration) -> Duration {
    let spread = base.as_micros() as u64;
    let random = getrandom::u64().unwrap_or(spread / 2);
    base / 2 + Duration::from_micros(random % spread.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn backoff_is_jittered_within_half_either_way() {
        for _ in 0..200 {
            let pause = jittered(Duration::from_millis(100));
            assert!(pause >= Duration::from_millis(50) && pause < Duration::from_millis(150));
        }
    }

    #[test]
    fn retry_after_is_taken_in_seconds_only() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::RETRY_AFTER, HeaderValue::from_str(v).unwrap());
            retry_after(&h)
        };
        assert_eq!(with("1"), Some(Duration::from_secs(1)));
        assert_eq!(with(" 0 "), Some(Duration::ZERO));
        assert_eq!(with("3600"), None);
        assert_eq!(with("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(with("-1"), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn only_failures_before_the_request_left_are_retried() {
        let io = |kind| std::io::Error::from(kind);
        assert!(never_sent(&io(std::io::ErrorKind::ConnectionRefused)));
        assert!(never_sent(&io(std::io::ErrorKind::ConnectionReset)));
        assert!(!never_sent(&io(std::io::ErrorKind::InvalidData)));
        assert!(!never_sent(&io(std::io::ErrorKind::TimedOut)));
        let wrapped = std::io::Error::other(io(std::io::ErrorKind::ConnectionRefused));
        // The outer error's kind decides, as for a TLS failure wrapped in an io::Error.
        assert!(!never_sent(&wrapped));
    }
}
