//! TLS end to end on real sockets, with certificates made at test time: the
//! callback listener over HTTP/1.1 and HTTP/2, certificate rotation the way
//! the kubelet performs it, broken updates, hostile clients, `https://`
//! upstreams with a private CA and mutual TLS, and through the real binary:
//! start-up errors, a Secret followed by `serve`, and `demo --tls`.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
use rustls::ClientConfig;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use feishu_gate::testing::config;
use feishu_gate::testing::server;
use feishu_gate::testing::server::tls::{Reload, ServerTls};
use support::binary::{Binary, Process, run, run_within};
use support::certs::{
    Ca, Leaf, SecretVolume, pem, provider, served_leaf, unwrap_pkcs8, write_file,
};
use support::client::{Protocol, tls_client, tls_connect};
use support::gateway::{self, Gate};
use support::*;

/// Bounds every wait for something that happens in the background; generous
/// so a loaded machine never fails a correct build.
const PATIENCE: Duration = Duration::from_secs(30);

/// A 2048-bit RSA key used only by these tests, for the RSA encodings (ring,
/// which generates the other keys here, cannot generate RSA keys). It
/// protects nothing.
const TEST_RSA_PKCS8: &str = "-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQClqbuDtTlqAqzE
ERP3O0VQyrihlRoKLqTzadEd4ttphZje56oivUiYXcs3/953XJ3LqiyWKaptacN4
ijEomoHs73VzBcHlP6/pMNYF8055scNv3UlkFzjPc3dloeSnBzBUvT46R8G5SRcy
kKg/jbeNT51QhgUr3Lf4OeK9Gp8XhpbaH9cugD/iyJXDvUGx+wmTWzBA2zX1ZHG6
tu864W5mN+TAkA/1rWv2hDhmDdMYfzKKB3yumI8dj7THkpGfMTkP9odeis3i82s2
fdtAO/6mzSzcEMt6zng16frka6xodgTXynJLu3mRTQ+QMgeCYWwBAe68pZCR6Q73
jw8Yrij9AgMBAAECggEATglLzumVv5W9+2gODyaI6ttrqJXbW9OIGS+N9bWQ5L6t
eccIEnA2m6uHGHx7t59Vp4Qkl6HN6ddp4ES8jmNl844DNekO4qYi/8Zk8w2fOF0f
8nh7Y147ASHjqujdlD6jKi+w+fQmUdkXx9Zzouhnf/XyZWWUVwqUUKY35Bt/uK0H
RYCEF9Ox3BN7+D11PMzsrWtcc0YfXQ+CRE1zRj1UTkTPj+ROEHCP5DY8gaKwji8D
QVRboydV7iIPt/dTNKNOX+50LW1gq750ABbGrME/g5hagNHR9GLXdGx4TgJCQc6K
HIJFeoxDpmPGjXw0IM0qX019VYJ8yE9819d/gc7gswKBgQDitbxhqZAOKHaY/Kht
TR0G3s5YQuf0rQ4puXRVlEiurxoZIJOezbZZUbD+fKJEZBAyKHaPHaqblfXJVA/n
zSBYsdUefvbops4ky0D/vFiSB4zvPBlccQZ8LDzMhENUA3RABPH5Vah0ACCokBe2
ttduUlLbbnDRPt0S6EvxGNgWywKBgQC7EOpdIe2lnMV+Dg6TzVRyjyJmH44B4Zc0
Rk4q4gk4Bnt7Cp+yE1ldT5LZp3w/oAI+FiIN4bTUAInJu+LtySOWlXFHAg2WDsfi
NFXZRIbIeXz/pEBEohPg0/764kciBk8XpNkxrUGi0+c/f0kzOnTMVZZBSG19dqCf
Avc/LMP+VwKBgG+usZ+25WVkH5CcHujBbUQ+LI6kXxpUyj5ZwuqJwwhy8DtipfY8
RtFXggbMJS/lz2i2MDmulqZQyKUmiTNbBM1Mxb1hNIdF7RWJH3scMNG3cIFGLQQy
FczECiuCGJzhmroS9ZUr0nFawrvnSBdVmWkamwDINkGOY1/2GbsqzwDjAoGAA3iM
4K2Ae1ItV+lq29Mzfeyp9rsfJ2nIJHApgyIuiZuVLvNDg0pYniKb1u4EoCmX4Q8I
ErndYRGhfNy/mSniPykGsQqYtfAQRWIzNZTP62hVqWiiyKM5OzKzyHPqXfdAAHBO
l11fmmXUJJl4AjtTb3cnEo8FeQ56bHjhnYp3GIECgYEArEhZ3bB3hu9wjZ4bqAVV
SGapXG5DBMViAKU+B1ll1awdTfkknwJYdwJeRDQMuGiFpzItGsJzDMzMOZ3Z3MKR
SUn8Qxz/hwz5Wb5w5Y6v5WEDM5j6cKSMYdNeDAS/lhoJJjRxx+Z//s4VfwWa7nf4
bxPvP/TDEXkKdXdDqmvp6/I=
-----END PRIVATE KEY-----";

// ---- connections and scrapes ----------------------------------------------

fn callback_body(task: &str) -> String {
    callback_with(TOKEN, "task_id", &format!("\"{task}\""))
}

/// HTTP over a TLS connection to the gateway.
async fn over_tls(stream: TlsStream<TcpStream>, protocol: Protocol) -> Conn {
    let port = stream.get_ref().0.peer_addr().unwrap().port();
    Conn::open(stream, protocol, &format!("https://127.0.0.1:{port}"))
        .await
        .unwrap()
}

/// A GET on a fresh connection, which the callback listener answers 405.
async fn get_over_tls(stream: TlsStream<TcpStream>) -> u16 {
    let mut conn = over_tls(stream, Protocol::Http1).await;
    let request = conn.request("GET", "/", "", &[]);
    conn.send(request).await.unwrap().status
}

/// A gateway serving `leaf` from a Secret volume it follows, in front of an
/// upstream that accepts everything.
async fn watched_gate(leaf: &Leaf) -> (SecretVolume, Upstream, Gate) {
    let volume = SecretVolume::new(&leaf.chain_pem, &leaf.key_pem);
    let upstream = Upstream::start(Reply::ok()).await;
    let gate = Gate::with_watched_tls(&upstream.url(), &volume.vars()).await;
    (volume, upstream, gate)
}

/// A TLS connection to the gateway offering only `alpn`, which it must choose.
async fn negotiated(
    gate: &Gate,
    roots: rustls::RootCertStore,
    alpn: &[u8],
) -> TlsStream<TcpStream> {
    let stream = tls_connect(gate.addr, tls_client(roots, &[alpn]))
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(alpn));
    stream
}

/// The expiry the gateway exports for the certificate it serves.
fn expiry_metric(gate: &Gate) -> f64 {
    metric(
        &gate.gateway.metrics.render(),
        "feishu_gate_tls_certificate_expiry_timestamp_seconds",
    )
}

/// `feishu_gate_upstream_errors_total` for one kind.
fn upstream_errors(gate: &Gate, kind: &str) -> u64 {
    metric(
        &gate.gateway.metrics.render(),
        &format!("feishu_gate_upstream_errors_total{{kind=\"{kind}\"}}"),
    ) as u64
}

/// Keeps handshaking until `wanted` is served, touching `open` with `ping` each
/// round so it never idles out; panics after [`PATIENCE`].
async fn wait_for_leaf(
    addr: SocketAddr,
    client: &Arc<ClientConfig>,
    wanted: &CertificateDer<'static>,
    open: &mut Conn,
    ping: &str,
) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let stream = tls_connect(addr, client.clone()).await.unwrap();
        if served_leaf(&stream) == *wanted {
            return;
        }
        // A callback, not a refused request: a refusal would close the connection.
        let answer = open.post(ping.to_owned()).await.unwrap();
        assert!(matches!(answer.status, 200 | 502), "{answer:?}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- the callback listener -------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_over_http1_and_http2_reach_the_upstream_through_tls() {
    let root = Ca::root("test root");
    let intermediate = root.intermediate("test intermediate");
    let leaf = intermediate.server_leaf("gateway");
    let (_volume, upstream, gate) = watched_gate(&leaf).await;

    // The client trusts only the root: the handshake succeeds only if the
    // intermediate is served along with the leaf.
    let stream = negotiated(&gate, root.roots(), b"http/1.1").await;
    assert_eq!(stream.get_ref().1.peer_certificates().unwrap().len(), 2);
    let answer = over_tls(stream, Protocol::Http1)
        .await
        .post(callback_body("t-h1"))
        .await
        .unwrap();
    assert_eq!(
        (answer.status, answer.version),
        (200, http::Version::HTTP_11),
        "{}",
        answer.text
    );
    assert_eq!(answer.text, r#"{"code":0,"msg":"success"}"#);

    let stream = negotiated(&gate, root.roots(), b"h2").await;
    let answer = over_tls(stream, Protocol::Http2)
        .await
        .post(callback_body("t-h2"))
        .await
        .unwrap();
    assert_eq!(answer.version, http::Version::HTTP_2);
    assert_eq!(answer.status, 200, "{}", answer.text);

    // A client offering both gets HTTP/2, and TLS 1.2 is still spoken.
    let stream = tls_connect(gate.addr, tls_client(root.roots(), &[b"http/1.1", b"h2"]))
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut tls12 = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(root.roots())
        .with_no_client_auth();
    tls12.alpn_protocols = vec![b"http/1.1".to_vec()];
    let stream = tls_connect(gate.addr, Arc::new(tls12)).await.unwrap();
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let answer = over_tls(stream, Protocol::Http1)
        .await
        .post(callback_body("t-tls12"))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text);

    let received = upstream.received();
    assert_eq!(received.len(), 3, "{received:?}");
    assert!(received[0].text().contains(r#""task_id":"t-h1""#));
    assert!(received[1].text().contains(r#""task_id":"t-h2""#));
    assert!(received.iter().all(|b| !b.text().contains(TOKEN)));

    assert_eq!(get(gate.admin, "/readyz").await.status, 200);
    // Unix seconds are integers well inside f64's exact range.
    assert_eq!(expiry_metric(&gate), leaf.not_after() as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_encoding_is_served() {
    let root = Ca::root("key formats root");
    let rsa = || KeyPair::from_pem(TEST_RSA_PKCS8).unwrap();
    let p256 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .unwrap()
        .serialize_pem();
    let p256 = || KeyPair::from_pem(&p256).unwrap();
    let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let ed25519 = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let keys: Vec<(&str, String, KeyPair)> = vec![
        ("PKCS#8 RSA", rsa().serialize_pem(), rsa()),
        (
            "PKCS#1 RSA",
            pem("RSA PRIVATE KEY", &unwrap_pkcs8(&rsa())),
            rsa(),
        ),
        ("PKCS#8 P-256", p256().serialize_pem(), p256()),
        (
            "SEC1 P-256",
            pem("EC PRIVATE KEY", &unwrap_pkcs8(&p256())),
            p256(),
        ),
        ("PKCS#8 P-384", p384.serialize_pem(), p384),
        ("PKCS#8 Ed25519", ed25519.serialize_pem(), ed25519),
    ];
    for (what, key_pem, key) in keys {
        let leaf = root.leaf(what, key, ExtendedKeyUsagePurpose::ServerAuth);
        let volume = SecretVolume::new(&leaf.chain_pem, &key_pem);
        let config = gateway::config("http://127.0.0.1:9/", &volume.vars());
        let tls = ServerTls::load(config.server.tls.as_ref().unwrap())
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let gate = Gate::serve(&config, Some(tls.acceptor())).await;
        let stream = tls_connect(gate.addr, tls_client(root.roots(), &[b"http/1.1"]))
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(served_leaf(&stream), leaf.der, "{what}");
        assert_eq!(get_over_tls(stream).await, 405, "{what}");
    }
}

// ---- rotation --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubelet_style_rotation_is_served_without_restart() {
    let root = Ca::root("rotation root");
    let old = root.server_leaf("before rotation");
    let (mut volume, upstream, gate) = watched_gate(&old).await;
    let client = tls_client(root.roots(), &[b"http/1.1"]);

    let stream = tls_connect(gate.addr, client.clone()).await.unwrap();
    assert_eq!(served_leaf(&stream), old.der);
    let mut open = over_tls(stream, Protocol::Http1).await;
    let answer = open.post(callback_body("before")).await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(expiry_metric(&gate), old.not_after() as f64);

    let new = {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "after rotation");
        params.not_after = rcgen::date_time_ymd(2031, 1, 1);
        let cert = params.signed_by(&key, &root.issuer).unwrap();
        Leaf {
            chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    };
    volume.update(&new.chain_pem, &new.key_pem);
    wait_for_leaf(
        gate.addr,
        &client,
        &new.der,
        &mut open,
        &callback_body("ping"),
    )
    .await;

    // The connection opened before the rotation goes on, on its old session.
    let answer = open.post(callback_body("after")).await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text);
    // What kept the connection busy meanwhile were callbacks too; the two that matter
    // came first and last.
    let received = upstream.received();
    assert!(
        received
            .first()
            .is_some_and(|b| b.text().contains(r#""task_id":"before""#)),
        "{received:?}"
    );
    assert!(
        received
            .last()
            .is_some_and(|b| b.text().contains(r#""task_id":"after""#)),
        "{received:?}"
    );
    assert_eq!(expiry_metric(&gate), new.not_after() as f64);
    assert_ne!(new.not_after(), old.not_after());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_update_is_ignored_and_the_last_good_certificate_stays() {
    let root = Ca::root("broken update root");
    let good = root.server_leaf("good");
    let mut volume = SecretVolume::new(&good.chain_pem, &good.key_pem);
    let config = gateway::config("http://127.0.0.1:9/", &volume.vars());
    let mut tls = ServerTls::load(config.server.tls.as_ref().unwrap()).unwrap();
    let gate = Gate::serve(&config, Some(tls.acceptor())).await;
    let client = tls_client(root.roots(), &[b"http/1.1"]);
    let other = root.server_leaf("other");

    let broken = [
        (
            "garbage certificate",
            "not a certificate".to_owned(),
            good.key_pem.clone(),
            config::TLS_CERT,
        ),
        (
            "garbage key",
            good.chain_pem.clone(),
            "not a key".to_owned(),
            config::TLS_KEY,
        ),
        (
            "key of another certificate",
            good.chain_pem.clone(),
            other.key_pem.clone(),
            config::TLS_CERT,
        ),
        (
            "empty files",
            String::new(),
            String::new(),
            config::TLS_CERT,
        ),
    ];
    for (what, cert, key, blamed) in broken {
        volume.update(&cert, &key);
        let refused = settle(&mut tls).await;
        let Reload::Refused(errors) = refused else {
            panic!("{what}: expected a refusal, got {refused:?}");
        };
        assert_eq!(errors[0].variable, blamed, "{what}");
        for e in &errors {
            let text = e.to_string();
            assert!(
                !text.contains("BEGIN") && !text.contains(&other.key_pem[40..80]),
                "{what}: {text}"
            );
        }
        let stream = tls_connect(gate.addr, client.clone()).await.unwrap();
        assert_eq!(served_leaf(&stream), good.der, "{what}");
        assert_eq!(get_over_tls(stream).await, 405, "{what}");
    }

    // A good update after broken ones is taken.
    volume.update(&other.chain_pem, &other.key_pem);
    assert!(matches!(settle(&mut tls).await, Reload::Reloaded(_)));
    let stream = tls_connect(gate.addr, client.clone()).await.unwrap();
    assert_eq!(served_leaf(&stream), other.der);
}

/// Reads the files until the change is applied or refused.
async fn settle(tls: &mut ServerTls) -> Reload {
    for _ in 0..10 {
        match tls.reload().await {
            Reload::Unchanged | Reload::Settling => {}
            done => return done,
        }
    }
    panic!("the change never settled");
}

// ---- hostile clients -------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_clients_cost_one_connection_each() {
    let root = Ca::root("hostile root");
    let leaf = root.server_leaf("gateway");
    let (_volume, _upstream, gate) = watched_gate(&leaf).await;
    let client = tls_client(root.roots(), &[b"h2", b"http/1.1"]);

    // Clients that connect and never say anything.
    let mut stalled = Vec::new();
    for _ in 0..3 {
        stalled.push(TcpStream::connect(gate.addr).await.unwrap());
    }
    // One that stops in the middle of its ClientHello.
    let mut half = TcpStream::connect(gate.addr).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();

    // Plain HTTP to the TLS port is never answered in HTTP, and closed.
    let mut plain = TcpStream::connect(gate.addr).await.unwrap();
    plain
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, plain.read_to_end(&mut answer))
        .await
        .expect("plain HTTP is closed");
    assert!(!answer.starts_with(b"HTTP/"));

    // A client that does not trust the certificate fails its own handshake.
    let stranger = Ca::root("stranger");
    assert!(
        tls_connect(gate.addr, tls_client(stranger.roots(), &[]))
            .await
            .is_err()
    );

    // Meanwhile everyone else is served.
    let stream = tls_connect(gate.addr, client.clone()).await.unwrap();
    let answer = over_tls(stream, Protocol::Http1)
        .await
        .post(callback_body("meanwhile"))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text);

    // The silent ones are closed once the handshake timeout passes.
    stalled.push(half);
    for mut tcp in stalled {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(PATIENCE, tcp.read(&mut buf))
            .await
            .expect("a stalled handshake is closed");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    let stream = tls_connect(gate.addr, client).await.unwrap();
    assert_eq!(served_leaf(&stream), leaf.der);
}

// ---- https upstreams -------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_with_a_private_ca_needs_the_ca_file() {
    let private = Ca::root("private upstream CA");
    let upstream = Upstream::start_tls(
        Reply::ok(),
        private
            .server_leaf("legacy")
            .server_config(None, &rustls::version::TLS13),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write_file(dir.path(), "ca.pem", &private.pem());

    let untrusting = Gate::start(&upstream.url(), &[]).await;
    post(untrusting.addr, "/", callback_body("no-ca"), &[])
        .await
        .feishu_error(502);
    assert!(upstream.received().is_empty());
    assert_eq!(upstream_errors(&untrusting, "connect"), 1);

    let trusting = Gate::start(&upstream.url(), &[(config::UPSTREAM_CA_FILE, &ca_file)]).await;
    let answer = post(trusting.addr, "/", callback_body("with-ca"), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(upstream.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_requiring_a_client_certificate_accepts_only_the_configured_one() {
    let server_ca = Ca::root("upstream server CA");
    let client_ca = Ca::root("upstream client CA");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write_file(dir.path(), "ca.pem", &server_ca.pem());
    let identity = client_ca.leaf(
        "feishu-gate",
        KeyPair::generate().unwrap(),
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let stranger = Ca::root("someone else").leaf(
        "intruder",
        KeyPair::generate().unwrap(),
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let with_identity = |leaf: Option<&Leaf>, name: &str| {
        let mut vars = vec![(config::UPSTREAM_CA_FILE, ca_file.clone())];
        if let Some(leaf) = leaf {
            vars.push((
                config::UPSTREAM_CLIENT_CERT,
                write_file(dir.path(), &format!("{name}.crt"), &leaf.chain_pem),
            ));
            vars.push((
                config::UPSTREAM_CLIENT_KEY,
                write_file(dir.path(), &format!("{name}.key"), &leaf.key_pem),
            ));
        }
        vars
    };

    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let upstream = Upstream::start_tls(
            Reply::ok(),
            server_ca
                .server_leaf("legacy")
                .server_config(Some(&client_ca), version),
        )
        .await;
        let url = upstream.url();
        for (who, identity) in [("anonymous", None), ("impostor", Some(&stranger))] {
            let gate = Gate::start(&url, &borrowed(&with_identity(identity, who))).await;
            let answer = post(gate.addr, "/", callback_body(who), &[]).await;
            assert_eq!(answer.status, 502, "{who} {version:?}: {}", answer.text);
            answer.feishu_error(502);
            let (connect, dropped) = (
                upstream_errors(&gate, "connect"),
                upstream_errors(&gate, "dropped"),
            );
            if version.version == rustls::ProtocolVersion::TLSv1_2 {
                assert_eq!((connect, dropped), (1, 0), "{who} {version:?}");
            } else {
                // Under TLS 1.3 the refusal arrives after the client's half of
                // the handshake; it is told apart when its alert is read, and
                // a close that overtakes the alert leaves it a dropped exchange.
                assert_eq!(connect + dropped, 1, "{who} {version:?}");
            }
        }
        assert!(upstream.received().is_empty(), "{version:?}");

        let gate = Gate::start(&url, &borrowed(&with_identity(Some(&identity), "own"))).await;
        let answer = post(gate.addr, "/", callback_body("identified"), &[]).await;
        assert_eq!(answer.status, 200, "{version:?}: {}", answer.text);
        assert_eq!(upstream.received().len(), 1, "{version:?}");
    }
}

/// Owned variables as the gateway takes them.
fn borrowed<'a>(vars: &'a [(&'a str, String)]) -> Vec<(&'a str, &'a str)> {
    vars.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

// ---- start-up, through the real binary -------------------------------------

/// The variables every start-up case shares, then `vars`.
fn start_up_env<'a>(vars: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        (config::TOKEN, TOKEN),
        (config::UPSTREAM_URL, "http://127.0.0.1:9/approvals"),
        (config::LISTEN, "127.0.0.1:0"),
        // A different address: the two listeners may not share one.
        (config::ADMIN_LISTEN, "127.0.0.2:0"),
    ];
    env.extend_from_slice(vars);
    env
}

fn check_config(vars: &[(&str, &str)]) -> support::binary::Ran {
    run(&["check-config"], &start_up_env(vars))
}

/// Runs `serve`, which must refuse to start; kills it if it starts anyway.
fn serve_refusing(vars: &[(&str, &str)]) -> support::binary::Ran {
    run_within(&["serve"], &start_up_env(vars), PATIENCE)
        .expect("serve started despite a bad configuration")
}

/// What is wrong, the variables set, and what the error must say.
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a [&'a str]);

#[test]
fn bad_certificate_files_stop_start_up_naming_the_variable() {
    let root = Ca::root("start-up root");
    let (a, b) = (root.server_leaf("a"), root.server_leaf("b"));
    let dir = tempfile::tempdir().unwrap();
    let cert = write_file(dir.path(), "a.crt", &a.chain_pem);
    let key = write_file(dir.path(), "a.key", &a.key_pem);
    let wrong_key = write_file(dir.path(), "b.key", &b.key_pem);
    let garbage = write_file(dir.path(), "garbage.pem", "this is not PEM\n");
    let missing = dir.path().join("missing.pem").display().to_string();

    let (code, _, stderr) = check_config(&[(config::TLS_CERT, &cert), (config::TLS_KEY, &key)]);
    assert_eq!(code, 0, "{stderr}");

    let cases: [Case; 6] = [
        (
            "mismatched key",
            vec![(config::TLS_CERT, &cert), (config::TLS_KEY, &wrong_key)],
            &[
                "FEISHU_GATE_TLS_CERT: ",
                "does not match",
                "FEISHU_GATE_TLS_KEY",
            ],
        ),
        (
            "garbage certificate",
            vec![(config::TLS_CERT, &garbage), (config::TLS_KEY, &key)],
            &["FEISHU_GATE_TLS_CERT: ", "no PEM certificate"],
        ),
        (
            "garbage key",
            vec![(config::TLS_CERT, &cert), (config::TLS_KEY, &garbage)],
            &["FEISHU_GATE_TLS_KEY: ", "no PEM private key"],
        ),
        (
            "missing certificate",
            vec![(config::TLS_CERT, &missing), (config::TLS_KEY, &key)],
            &["FEISHU_GATE_TLS_CERT: ", "cannot read"],
        ),
        (
            "only the certificate",
            vec![(config::TLS_CERT, &cert)],
            &["FEISHU_GATE_TLS_KEY: "],
        ),
        (
            "only the key",
            vec![(config::TLS_KEY, &key)],
            &["FEISHU_GATE_TLS_CERT: "],
        ),
    ];
    for (what, vars, expected) in cases {
        for (code, _, stderr) in [check_config(&vars), serve_refusing(&vars)] {
            assert_eq!(code, 64, "{what}: {stderr}");
            for text in expected {
                assert!(stderr.contains(text), "{what}: {text:?} not in {stderr}");
            }
            assert!(!stderr.contains("PRIVATE KEY-----"), "{what}: {stderr}");
            assert!(!stderr.contains(&a.key_pem[40..80]), "{what}: {stderr}");
            assert!(!stderr.contains(&b.key_pem[40..80]), "{what}: {stderr}");
        }
    }

    // Problems with the listener's files and the upstream's are reported together.
    let (code, _, stderr) = check_config(&[
        (config::TLS_CERT, &garbage),
        (config::TLS_KEY, &garbage),
        (config::UPSTREAM_CA_FILE, &garbage),
    ]);
    assert_eq!(code, 64, "{stderr}");
    for variable in [config::TLS_CERT, config::TLS_KEY, config::UPSTREAM_CA_FILE] {
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&format!("{variable}: "))),
            "{variable} not in {stderr}"
        );
    }
}

/// Waits for the JSON log line whose message is `message`.
async fn logged(gate: &Process, message: &str) -> serde_json::Value {
    gate.json_line(message, |v| v["message"] == message).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_tls_and_follows_the_secret() {
    let root = Ca::root("binary root");
    let (first, second, third) = (
        root.server_leaf("first"),
        root.server_leaf("second"),
        root.server_leaf("third"),
    );
    let mut volume = SecretVolume::new(&first.chain_pem, &first.key_pem);
    let mut vars = vec![("RUST_LOG", "info")];
    vars.extend(volume.vars());
    let mut gateway = Binary::start("http://127.0.0.1:9/approvals", &vars).await;
    let serving = logged(&gateway, "serving TLS certificate").await;
    assert_eq!(serving["subject"], "CN=first");
    let listen: SocketAddr = logged(&gateway, "serving callbacks").await["listen"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(listen, gateway.addr);
    let addr = gateway.addr;
    let client = tls_client(root.roots(), &[b"h2", b"http/1.1"]);
    let stream = tls_connect(addr, client.clone()).await.unwrap();
    assert_eq!(served_leaf(&stream), first.der);
    let mut open = over_tls(stream, Protocol::Http1).await;

    // A key that belongs to another certificate: refused, logged without contents.
    volume.update(&first.chain_pem, &second.key_pem);
    let refused = logged(
        &gateway,
        "TLS certificate files changed but are not usable; still serving the previous certificate",
    )
    .await;
    assert_eq!(refused["level"], "WARN");
    assert_eq!(refused["variable"], config::TLS_CERT);
    assert!(
        refused["problem"]
            .as_str()
            .unwrap()
            .contains("does not match")
    );
    let text = refused.to_string();
    assert!(!text.contains("BEGIN") && !text.contains(&second.key_pem[40..80]));
    let stream = tls_connect(addr, client.clone()).await.unwrap();
    assert_eq!(served_leaf(&stream), first.der);

    volume.update(&third.chain_pem, &third.key_pem);
    let reloaded = logged(&gateway, "TLS certificate reloaded").await;
    let (_, parsed) = x509_parser::parse_x509_certificate(&third.der).unwrap();
    assert_eq!(reloaded["serial"], parsed.raw_serial_as_string());
    assert_eq!(reloaded["expires"], parsed.validity().not_after.to_string());
    // The binary has the key: its callbacks are sealed.
    let ping = seal(KEY, &callback_body("ping"));
    wait_for_leaf(addr, &client, &third.der, &mut open, &ping).await;
    let answer = open.post(seal(KEY, &callback_body("last"))).await.unwrap();
    assert!(matches!(answer.status, 200 | 502), "{answer:?}");

    gateway.signal("TERM");
    assert_eq!(
        gateway.wait_exit(PATIENCE).await,
        Some(0),
        "the process did not stop on SIGTERM"
    );
}

// ---- demo --tls ------------------------------------------------------------

#[tokio::test]
async fn demo_tls_serves_https_and_prints_a_send_command_that_works() {
    let mut demo = Process::spawn(&["demo", "--tls", "--port", "0", "--admin-port", "0"], &[]);
    let command = demo
        .line("send command", |l| l.contains(" send --url "))
        .await;
    let printed = demo.stdout_lines();
    let printed = printed
        .iter()
        .take_while(|l| **l != command)
        .cloned()
        .collect::<Vec<_>>()
        .join("\n");
    // Started as a plain binary, the demo names the binary it was started as.
    let (program, rest) = command.trim_start().split_once(" send ").unwrap();
    assert_eq!(program, support::binary::BIN, "{command}");
    let command = format!("send {rest}");
    assert!(printed.contains("https://127.0.0.1:"), "{printed}");
    assert!(printed.contains("④ feishu-gate → Feishu: 200"), "{printed}");
    assert!(command.contains("--ca-file "), "{command}");
    let cert_dir = command
        .split_whitespace()
        .skip_while(|a| *a != "--ca-file")
        .nth(1)
        .map(|p| std::path::Path::new(p).parent().unwrap().to_owned())
        .unwrap();

    // The printed command, as a user would paste it (the demo's REJECT
    // without a reason is refused by its legacy system: a 422 relayed).
    let args: Vec<&str> = command.split_whitespace().collect();
    let (_, answer, problem) = run(&args, &[]);
    assert!(answer.starts_with("422 "), "{answer} {problem}");
    let approve = command.replace("--action REJECT", "--action APPROVE");
    let args: Vec<&str> = approve.split_whitespace().collect();
    let (code, _, problem) = run(&args, &[]);
    assert_eq!(code, 0, "{problem}");

    // What a user gets wrong first, each answered with the URL tried and what to do.
    let url = args
        .iter()
        .skip_while(|a| **a != "--url")
        .nth(1)
        .unwrap()
        .to_string();
    let ca_at = args.iter().position(|a| *a == "--ca-file").unwrap();
    let without_ca: Vec<&str> = args
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != ca_at && *i != ca_at + 1)
        .map(|(_, a)| *a)
        .collect();
    let (code, _, problem) = run(&without_ca, &[]);
    assert_eq!(code, 3, "{problem}");
    assert!(
        problem.contains(&format!("POST {url}: request failed: "))
            && problem.contains("UnknownIssuer")
            && problem.contains("hint: the gateway's certificate is not signed by a CA this machine trusts: give that CA with --ca-file PATH"),
        "{problem}"
    );
    let plain_url = url.replacen("https://", "http://", 1);
    let to_tls_port = approve.replace(&url, &plain_url);
    let to_tls_port: Vec<&str> = to_tls_port.split_whitespace().collect();
    let (code, _, problem) = run(&to_tls_port, &[]);
    assert_eq!(code, 3, "{problem}");
    assert!(
        problem.contains(&format!("POST {plain_url}: "))
            && problem.contains("hint: the port answered with something other than HTTP: if the gateway serves TLS (FEISHU_GATE_TLS_CERT), use https://"),
        "{problem}"
    );

    // SIGTERM to the demo this test started: it drains and removes its certificate.
    demo.signal("TERM");
    assert_eq!(demo.wait_exit(PATIENCE).await, Some(0));
    assert!(!cert_dir.exists(), "{} was left behind", cert_dir.display());
}

/// Over TLS too, an HTTP/2 connection left idle after a callback is sent
/// GOAWAY before it closes: hyper's client sees its connection end cleanly,
/// where a bare close_notify would leave it a broken pipe.
#[tokio::test]
async fn an_idle_http2_connection_over_tls_ends_with_goaway() {
    let root = Ca::root("test root");
    let leaf = root.server_leaf("gateway");
    let (_volume, _upstream, gate) = watched_gate(&leaf).await;
    let stream = negotiated(&gate, root.roots(), b"h2").await;
    let mut conn = over_tls(stream, Protocol::Http2).await;
    let answer = conn.post(callback_body("t-h2-idle")).await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text);
    let idle_from = std::time::Instant::now();
    let limit = server::HEADER_READ_TIMEOUT + Duration::from_secs(6);
    let ended = conn
        .ended(limit)
        .await
        .unwrap_or_else(|| panic!("still open after {limit:?}"));
    assert!(ended.is_ok(), "the connection broke: {ended:?}");
    assert!(
        idle_from.elapsed() >= server::HEADER_READ_TIMEOUT - Duration::from_millis(500),
        "closed after only {:?}",
        idle_from.elapsed()
    );
}

/// The server's order decides the cipher suite: a client listing AES-256-GCM first, as
/// OpenSSL's and rustls's do, gets AES-128-GCM over SHA-256, the cheaper handshake.
#[tokio::test]
async fn the_cheaper_suite_is_chosen_whatever_the_clients_order() {
    let root = Ca::root("test root");
    let leaf = root.server_leaf("gateway");
    let (_volume, _upstream, gate) = watched_gate(&leaf).await;
    let client = tls_client(root.roots(), &[b"http/1.1"]);
    let offered: Vec<_> = client
        .crypto_provider()
        .cipher_suites
        .iter()
        .map(|s| s.suite())
        .collect();
    assert_eq!(
        offered.first(),
        Some(&rustls::CipherSuite::TLS13_AES_256_GCM_SHA384),
        "the client prefers AES-256"
    );
    let stream = tls_connect(gate.addr, client).await.unwrap();
    assert_eq!(
        stream
            .get_ref()
            .1
            .negotiated_cipher_suite()
            .map(|s| s.suite()),
        Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
    );
}
