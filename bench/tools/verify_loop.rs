//! Runs `Verifier::verify` on one benchmark callback in a loop, for
//! instruction-level profiles that do not depend on the machine's load:
//!
//! `valgrind --tool=callgrind target/release/examples/verify_loop typical 1000`
//!
//! Kinds: `typical` (sealed, about 1 KiB), `large` (sealed, near 64 KiB),
//! `plain` (about 1 KiB, no envelope).

#[path = "../common/mod.rs"]
mod common;

use std::hint::black_box;

use feishu_gate::testing::callback::ForwardOptions;
use feishu_gate::testing::callback::secrets::{KeySet, TokenSet};
use feishu_gate::testing::callback::verify::Verifier;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let kind = args.next().unwrap_or_else(|| "typical".to_owned());
    let calls: u64 = args.next().unwrap_or_else(|| "1000".to_owned()).parse()?;
    let (body, encrypted) = match kind.as_str() {
        "typical" => (common::sealed(1, common::Size::Typical), true),
        "large" => (common::sealed(1, common::Size::Large), true),
        "plain" => (common::plaintext(1, common::Size::Typical), false),
        other => return Err(format!("unknown kind {other}: typical, large or plain").into()),
    };
    let verifier = Verifier {
        tokens: TokenSet::new([common::TOKEN.to_owned()]),
        keys: if encrypted {
            KeySet::new([common::KEY.to_owned()])
        } else {
            KeySet::default()
        },
        allow_plaintext: false,
        forward: ForwardOptions::default(),
    };
    let mut forwarded = 0usize;
    for _ in 0..calls {
        let callback = verifier
            .verify(black_box(body.as_bytes()))
            .map_err(|r| format!("the benchmark body is refused: {r:?}"))?;
        forwarded += black_box(callback).upstream_body.len();
    }
    println!("{calls} calls, {forwarded} bytes forwarded");
    Ok(())
}
