//! The work one callback costs with no network: open the envelope, check the
//! token, validate, build the upstream body and the idempotency key, that is
//! `Verifier::verify`. Target: at most 5 µs for a typical (1 KiB) callback.
//!
//! Before timing, each case prints how many heap allocations (and bytes) one
//! call makes, counted by a global allocator that only counts.
//!
//! `cargo bench --bench callback`

// The counting allocator below is a `GlobalAlloc`, an unsafe trait.
#![allow(unsafe_code)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use feishu_gate::testing::callback::ForwardOptions;
use feishu_gate::testing::callback::secrets::{KeySet, TokenSet};
use feishu_gate::testing::callback::verify::Verifier;

use common::{KEY, Size, TOKEN};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static ALLOCATED_BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed straight to the system allocator; the counters
// are only observed.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: same layout, same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: `ptr` came from `System` with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn verifier(encrypted: bool) -> Verifier {
    Verifier {
        tokens: TokenSet::new([TOKEN.to_owned()]),
        keys: if encrypted {
            KeySet::new([KEY.to_owned()])
        } else {
            KeySet::default()
        },
        allow_plaintext: false,
        forward: ForwardOptions::default(),
    }
}

/// Prints what one call allocates, averaged over many calls.
fn report_allocations(name: &str, verifier: &Verifier, body: &[u8]) {
    const CALLS: u64 = 1_000;
    let (count, bytes) = (
        ALLOCATIONS.load(Ordering::Relaxed),
        ALLOCATED_BYTES.load(Ordering::Relaxed),
    );
    for _ in 0..CALLS {
        let callback = verifier.verify(black_box(body));
        assert!(callback.is_ok(), "{name}: the benchmark body verifies");
        drop(black_box(callback));
    }
    let count = ALLOCATIONS.load(Ordering::Relaxed) - count;
    let bytes = ALLOCATED_BYTES.load(Ordering::Relaxed) - bytes;
    println!(
        "{name}: {} bytes in, {:.1} allocations and {:.0} bytes allocated per call",
        body.len(),
        count as f64 / CALLS as f64,
        bytes as f64 / CALLS as f64
    );
}

fn verify(c: &mut Criterion) {
    let cases = [
        ("encrypted_1k", true, common::sealed(1, Size::Typical)),
        ("encrypted_64k", true, common::sealed(1, Size::Large)),
        ("plaintext_1k", false, common::plaintext(1, Size::Typical)),
    ];
    let mut group = c.benchmark_group("verify");
    for (name, encrypted, body) in &cases {
        let verifier = verifier(*encrypted);
        let body = body.as_bytes();
        report_allocations(name, &verifier, body);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(*name, |b| b.iter(|| verifier.verify(black_box(body))));
    }
    group.finish();
}

/// Refusals of sealed bodies of one size, by why they are refused. Without the token a
/// caller must learn nothing from how long a refusal takes: a bad padding and a good one
/// around bytes that are not JSON cost the same (the padding oracle), and neither costs
/// less than a wrong token.
fn refuse(c: &mut Criterion) {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use feishu_gate::testing::callback::envelope::CallbackKey;

    let key = CallbackKey::new(KEY);
    let plaintext = common::plaintext(1, Size::Typical);
    let seal = |bytes: &[u8]| format!(r#"{{"encrypt":"{}"}}"#, key.encrypt_with_iv(bytes, [7; 16]));
    // The last ciphertext block's predecessor altered until the padding is bad.
    let bad_padding = {
        let sealed = key.encrypt_with_iv(plaintext.as_bytes(), [7; 16]);
        let mut raw = STANDARD.decode(sealed).unwrap();
        let at = raw.len() - 17;
        for flip in 1..=255u8 {
            raw[at] ^= flip;
            if !key.open(&STANDARD.encode(&raw)).unwrap().1 {
                break;
            }
            raw[at] ^= flip;
        }
        format!(r#"{{"encrypt":"{}"}}"#, STANDARD.encode(&raw))
    };
    let not_json: Vec<u8> = plaintext.bytes().map(|b| b ^ 0x80).collect();
    let cases = [
        ("bad_padding", bad_padding),
        ("good_padding_not_json", seal(&not_json)),
        (
            "wrong_token",
            seal(
                plaintext
                    .replace(TOKEN, &"x".repeat(TOKEN.len()))
                    .as_bytes(),
            ),
        ),
    ];
    let verifier = verifier(true);
    let mut group = c.benchmark_group("refuse_1k");
    for (name, body) in &cases {
        let body = body.as_bytes();
        assert!(verifier.verify(body).is_err(), "{name} is refused");
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(*name, |b| b.iter(|| verifier.verify(black_box(body))));
    }
    group.finish();
}

criterion_group!(benches, verify, refuse);
criterion_main!(benches);
