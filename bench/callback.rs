//! The work one callback costs.
//!
//! - `verify`: with no network: open the envelope, check the token, validate, build the
//!   upstream body and the idempotency key, that is `Verifier::verify`. Target: at most
//!   5 µs for a typical (1 KiB) callback.
//! - `path`: the whole hop over loopback: a client on a kept-alive connection, the gateway
//!   serving as `serve` does (worker threads, its upstream pool), and a legacy system
//!   answering `{"code":0}`. Client and legacy system are plain threads that allocate
//!   nothing per request, so every allocation counted is the gateway's. Target: at most
//!   12 heap allocations per callback.
//!
//! Before timing, each case prints how many heap allocations (and bytes) one
//! call makes, counted by a global allocator that only counts.
//!
//! `cargo bench --bench callback`, or `cargo bench --bench callback -- path` for the hop.

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
        show_site(layout.size());
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
        show_site(new_size);
        ALLOCATED_BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: `ptr` came from `System` with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Whether each allocation prints where it was made (`ALLOCATION_SITES=1`, for one
/// callback of the `path` group).
static SHOW_SITES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

std::thread_local! {
    /// Set while a site is printed: the backtrace allocates too.
    static SHOWING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn show_site(size: usize) {
    if !SHOW_SITES.load(Ordering::Relaxed) || SHOWING.with(|s| s.replace(true)) {
        return;
    }
    let thread = std::thread::current();
    eprintln!(
        "--- {size} bytes on {}\n{}",
        thread.name().unwrap_or("?"),
        std::backtrace::Backtrace::force_capture()
    );
    SHOWING.with(|s| s.set(false));
}

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

criterion_group!(benches, verify, refuse, path);
criterion_main!(benches);

/// A legacy system that answers every request `{"code":0}`, one thread per connection,
/// reading into a buffer of its own: nothing allocated per request.
fn legacy_system() -> std::net::SocketAddr {
    use std::io::{Read as _, Write as _};
    const ANSWER: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n{\"code\":0}";
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                stream.set_nodelay(true).unwrap();
                let mut buffer = vec![0u8; 256 * 1024];
                let mut filled = 0;
                loop {
                    match message_end(&buffer[..filled]) {
                        Some(end) => {
                            if stream.write_all(ANSWER).is_err() {
                                return;
                            }
                            buffer.copy_within(end..filled, 0);
                            filled -= end;
                        }
                        None => match stream.read(&mut buffer[filled..]) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => filled += n,
                        },
                    }
                }
            });
        }
    });
    addr
}

/// Where the first HTTP/1.1 message in `bytes` ends, once all of it is there: its head,
/// and a body of its `Content-Length`.
fn message_end(bytes: &[u8]) -> Option<usize> {
    let head = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let length = bytes[..head]
        .split(|&b| b == b'\n')
        .find_map(|line| {
            let (name, value) = line.split_at(line.iter().position(|&b| b == b':')?);
            name.eq_ignore_ascii_case(b"content-length")
                .then(|| std::str::from_utf8(&value[1..]).ok()?.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0);
    (bytes.len() >= head + length).then_some(head + length)
}

/// The gateway, serving on loopback as `serve` does, in front of `legacy`.
fn gateway(legacy: std::net::SocketAddr, dedup: bool) -> std::net::SocketAddr {
    use feishu_gate::testing::app::{App, ListenerTls};
    use feishu_gate::testing::config::{self as vars, Config};
    use feishu_gate::testing::server::Listeners;

    let upstream = format!("http://{legacy}/legacy/approve");
    let mut settings = vec![
        (vars::UPSTREAM_URL, upstream.as_str()),
        (vars::TOKEN, TOKEN),
        (vars::KEY, KEY),
        (vars::RATE_LIMIT_RPS, "0"),
        (vars::WORKERS, "1"),
    ];
    if !dedup {
        settings.push((vars::DEDUP_TTL_SECS, "0"));
    }
    let config = Config::from_vars(settings).unwrap().config;
    let app = App::build(&config).unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let callback = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            sender.send(callback.local_addr().unwrap()).unwrap();
            let listeners = Listeners { callback, admin };
            let tls = ListenerTls::Files(std::time::Duration::from_secs(3600));
            let (_, serving) = app.start(listeners, tls, std::future::pending());
            serving.await;
        });
    });
    receiver.recv().unwrap()
}

/// A client on one kept-alive connection, sending requests built before it starts and
/// reading each answer into a buffer of its own.
struct Client {
    stream: std::net::TcpStream,
    requests: Vec<Vec<u8>>,
    next: usize,
    buffer: Vec<u8>,
}

impl Client {
    fn new(gateway: std::net::SocketAddr, bodies: Vec<String>) -> Self {
        let stream = std::net::TcpStream::connect(gateway).unwrap();
        stream.set_nodelay(true).unwrap();
        let requests = bodies
            .iter()
            .map(|body| {
                format!(
                    "POST / HTTP/1.1\r\nHost: gateway\r\n\
                     Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes()
            })
            .collect();
        Self {
            stream,
            requests,
            next: 0,
            buffer: vec![0; 64 * 1024],
        }
    }

    /// Sends the next request and reads its answer, which must be a 200.
    fn callback(&mut self) {
        use std::io::{Read as _, Write as _};
        let request = &self.requests[self.next % self.requests.len()];
        self.next += 1;
        self.stream.write_all(request).unwrap();
        let mut filled = 0;
        let end = loop {
            if let Some(end) = message_end(&self.buffer[..filled]) {
                break end;
            }
            let n = self.stream.read(&mut self.buffer[filled..]).unwrap();
            assert!(n > 0, "the gateway closed the connection");
            filled += n;
        };
        assert!(
            self.buffer.starts_with(b"HTTP/1.1 200 "),
            "{}",
            String::from_utf8_lossy(&self.buffer[..end])
        );
        assert_eq!(filled, end, "one answer per request");
    }
}

/// The whole hop, on a gateway with duplicate suppression off (as `bench/run.sh` runs it)
/// and on, with every decision a new one.
fn path(c: &mut Criterion) {
    const CALLS: u64 = 2_000;
    let legacy = legacy_system();
    let mut group = c.benchmark_group("path");
    for (name, dedup) in [("keep_alive", false), ("keep_alive_dedup", true)] {
        let gateway = gateway(legacy, dedup);
        // With duplicate suppression, the counted callbacks are each a new decision;
        // criterion's timing goes round them again, as copies.
        let distinct = if dedup { 2 * CALLS } else { 256 };
        let bodies = (0..distinct)
            .map(|n| common::sealed(n, Size::Typical))
            .collect();
        let mut client = Client::new(gateway, bodies);
        // Pools, buffers and tables at their working size before counting.
        for _ in 0..CALLS {
            client.callback();
        }
        let (count, bytes) = (
            ALLOCATIONS.load(Ordering::Relaxed),
            ALLOCATED_BYTES.load(Ordering::Relaxed),
        );
        for _ in 0..CALLS {
            client.callback();
        }
        let count = ALLOCATIONS.load(Ordering::Relaxed) - count;
        let bytes = ALLOCATED_BYTES.load(Ordering::Relaxed) - bytes;
        println!(
            "path/{name}: {:.1} allocations and {:.0} bytes allocated per callback",
            count as f64 / CALLS as f64,
            bytes as f64 / CALLS as f64
        );
        if std::env::var_os("ALLOCATION_SITES").is_some() {
            // Whatever the gateway does after answering is the callback's too.
            std::thread::sleep(std::time::Duration::from_millis(100));
            SHOW_SITES.store(true, Ordering::Relaxed);
            client.callback();
            std::thread::sleep(std::time::Duration::from_millis(100));
            SHOW_SITES.store(false, Ordering::Relaxed);
        }
        group.bench_function(name, |b| b.iter(|| client.callback()));
    }
    group.finish();
}
