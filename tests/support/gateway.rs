//! The gateway in process, on port 0, with the test token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use feishu_gate::testing::app::{App, ListenerTls};
use feishu_gate::testing::config::{self, Config};
use feishu_gate::testing::pipeline::Gateway;
use feishu_gate::testing::server::Listeners;

use super::TOKEN;
use super::client::{self, Answer};

/// How often a gateway serving TLS reads its certificate files again.
pub const TLS_POLL: Duration = Duration::from_millis(100);

/// `TOKEN`, the given upstream, and `extra` variables on top. Duplicate
/// suppression is off unless `extra` turns it on, so tests can send the same
/// callback repeatedly and see each delivery.
pub fn config(upstream_url: &str, extra: &[(&str, &str)]) -> Config {
    let mut vars: Vec<(String, String)> = vec![
        (config::UPSTREAM_URL.into(), upstream_url.into()),
        (config::TOKEN.into(), TOKEN.into()),
        (config::LANG.into(), "en".into()),
        (config::DEDUP_TTL_SECS.into(), "0".into()),
    ];
    for (k, v) in extra {
        vars.retain(|(name, _)| name != k);
        vars.push(((*k).into(), (*v).into()));
    }
    Config::from_vars(vars)
        .expect("test configuration is valid")
        .config
}

/// The gateway, in process, on port 0; it begins shutting down when dropped.
pub struct Gate {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub gateway: Arc<Gateway>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Gate {
    /// Starts with [`config`]`(upstream_url, extra)`.
    pub async fn start(upstream_url: &str, extra: &[(&str, &str)]) -> Self {
        Self::serve(&config(upstream_url, extra), None).await
    }

    /// Starts with `config`, over TLS when `tls` is given.
    pub async fn serve(config: &Config, tls: Option<TlsAcceptor>) -> Self {
        Self::serve_app(App::build(config).expect("gateway builds"), tls).await
    }

    /// Serves `app`: over the given TLS, or else as its files say, following them.
    async fn serve_app(app: App, tls: Option<TlsAcceptor>) -> Self {
        let callback = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, admin_addr) = (callback.local_addr().unwrap(), admin.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let listeners = Listeners { callback, admin };
        let tls = tls.map_or(ListenerTls::Files(TLS_POLL), ListenerTls::Given);
        let (gateway, serving) = app.start(listeners, tls, shutdown);
        let task = tokio::spawn(serving);
        Gate {
            addr,
            admin: admin_addr,
            gateway,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Serves TLS from the files `extra` names, following their changes every [`TLS_POLL`].
    pub async fn with_watched_tls(upstream_url: &str, extra: &[(&str, &str)]) -> Self {
        let config = config(upstream_url, extra);
        assert!(config.server.tls.is_some(), "TLS files are set");
        Self::serve(&config, None).await
    }

    /// Begins graceful shutdown; the returned handle completes when drained.
    pub fn shutdown(&mut self) -> tokio::task::JoinHandle<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().expect("shut down once")
    }

    pub async fn post(&self, body: impl Into<Bytes>) -> Answer {
        client::post(self.addr, "/", body, &[]).await
    }

    pub async fn metrics(&self) -> String {
        super::metrics::scrape(self.admin).await
    }
}
