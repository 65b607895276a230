//! Listeners: the proxy (HTTP/1.1 and HTTP/2, TLS with ALPN when configured) and the admin
//! listener, with graceful shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::TlsFiles;
use crate::gateway::Gateway;
use crate::pipeline::{self, forward::ConnInfo};

/// Why the listeners could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
}

/// The running listeners of one gateway.
pub struct Running {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting; in-flight requests get up to `shutdown_grace` to finish.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Waits until both listeners have stopped.
    pub async fn wait(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

fn tls_acceptor(files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor, ServerError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| ServerError::Tls(format!("{}: {e}", files.cert.display())))?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| ServerError::Tls(format!("{}: {e}", files.key.display())))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ServerError::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| ServerError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Binds both listeners and starts serving.
pub async fn start(gw: Arc<Gateway>) -> Result<Running, ServerError> {
    let config = gw.config.clone();
    let tls = config.server.tls.as_ref().map(tls_acceptor).transpose()?;
    let proxy = TcpListener::bind(config.server.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.server.listen,
            source,
        })?;
    let admin = TcpListener::bind(config.admin.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.admin.listen,
            source,
        })?;
    let proxy_addr = proxy.local_addr().map_err(|source| ServerError::Bind {
        addr: config.server.listen,
        source,
    })?;
    let admin_addr = admin.local_addr().map_err(|source| ServerError::Bind {
        addr: config.admin.listen,
        source,
    })?;
    let (shutdown, rx) = watch::channel(false);

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.server.header_read_timeout)
        .max_buf_size(config.server.max_header_bytes.max(8192) + 1024)
        .max_headers(config.server.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(config.server.max_header_bytes as u32)
        .max_concurrent_streams(256);
    let builder = Arc::new(builder);

    let proxy_task = {
        let gw = gw.clone();
        let mut rx = rx.clone();
        let builder = builder.clone();
        let grace = config.server.shutdown_grace;
        tokio::spawn(async move {
            let graceful = GracefulShutdown::new();
            loop {
                tokio::select! {
                    accepted = proxy.accept() => {
                        let Ok((stream, remote)) = accepted else { continue };
                        let _ = stream.set_nodelay(true);
                        let gw = gw.clone();
                        let builder = builder.clone();
                        let tls = tls.clone();
                        let watcher = graceful.watcher();
                        let handshake_timeout = gw.config.server.header_read_timeout;
                        tokio::spawn(async move {
                            let conn = ConnInfo { remote, tls: tls.is_some() };
                            let service = service_fn(move |req| {
                                let gw = gw.clone();
                                async move { Ok::<_, Infallible>(pipeline::handle(&gw, req, conn).await) }
                            });
                            match tls {
                                Some(acceptor) => {
                                    // A client that never finishes the handshake must not hold the slot.
                                    let Ok(Ok(stream)) = tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await else {
                                        return;
                                    };
                                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                                    let _ = watcher.watch(conn.into_owned()).await;
                                }
                                None => {
                                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                                    let _ = watcher.watch(conn.into_owned()).await;
                                }
                            }
                        });
                    }
                    _ = rx.changed() => break,
                }
            }
            drop(proxy);
            if tokio::time::timeout(grace, graceful.shutdown())
                .await
                .is_err()
            {
                tracing::warn!("shutdown grace period over; closing remaining connections");
            }
        })
    };

    let admin_task = {
        let gw = gw.clone();
        let mut rx = rx.clone();
        tokio::spawn(async move {
            let graceful = GracefulShutdown::new();
            let builder = hyper::server::conn::http1::Builder::new();
            loop {
                tokio::select! {
                    accepted = admin.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let gw = gw.clone();
                        let service = service_fn(move |req| {
                            let gw = gw.clone();
                            async move { Ok::<_, Infallible>(crate::admin::handle(&gw, req).await) }
                        });
                        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                        tokio::spawn(async move { let _ = conn.await; });
                    }
                    _ = rx.changed() => break,
                }
            }
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(2), graceful.shutdown()).await;
        })
    };

    Ok(Running {
        proxy_addr,
        admin_addr,
        shutdown,
        tasks: vec![proxy_task, admin_task],
    })
}
