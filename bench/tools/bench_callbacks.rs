//! Writes callback bodies for the load benchmarks in `bench/`, one JSON body
//! per line: `count` distinct decisions, sealed (`typical`, `large`) or plain
//! (`plain`), with the token and key from `bench/common`.
//!
//! `cargo run --release --example bench_callbacks -- 256 typical > bodies.txt`

#[path = "../common/mod.rs"]
mod common;

use std::io::Write;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let count: u64 = args.next().unwrap_or_else(|| "256".to_owned()).parse()?;
    let kind = args.next().unwrap_or_else(|| "typical".to_owned());
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for n in 0..count {
        let body = match kind.as_str() {
            "typical" => common::sealed(n, common::Size::Typical),
            "large" => common::sealed(n, common::Size::Large),
            "plain" => common::plaintext(n, common::Size::Typical),
            other => return Err(format!("unknown kind {other}: typical, large or plain").into()),
        };
        writeln!(out, "{body}")?;
    }
    out.flush()?;
    Ok(())
}
