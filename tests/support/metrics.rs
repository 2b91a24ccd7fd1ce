//! The one scraper of the tests: a series read from the text exposition.

use std::net::SocketAddr;

/// A metric's value from the text exposition; a series that is not exported fails the test,
/// so an assertion on a misspelt or never-registered metric cannot pass by reading 0.
pub fn metric(text: &str, series: &str) -> f64 {
    value(text, series).unwrap_or_else(|| panic!("no series {series} in the scrape:\n{text}"))
}

/// `feishu_gate_duplicates_suppressed_total` for one way of recognising a copy
/// (`in_flight`, `remembered`) in one memory (`local`, `shared`).
pub fn duplicates(text: &str, how: &str, store: &str) -> f64 {
    metric(
        text,
        &format!(r#"feishu_gate_duplicates_suppressed_total{{how="{how}",store="{store}"}}"#),
    )
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .map(|v| {
                v.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{series} is not a number: {l}"))
            })
    })
}

/// `/metrics` from an admin listener; anything but a 200 fails the test.
pub async fn scrape(admin: SocketAddr) -> String {
    let answer = super::client::get(admin, "/metrics").await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    answer.text
}
