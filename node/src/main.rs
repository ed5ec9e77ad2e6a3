//! `anygate`: parse flags and config (bad config exits 64), set up logging,
//! bind listeners, run the node until SIGTERM/SIGINT.

use anygate_node::app::{App, AppError};
use anygate_node::config::{BackendKind, Cli, Config, LogFormat};
use anygate_node::dataplane::identity;
use clap::Parser;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

const EX_CONFIG: u8 = 64;
const EX_UNAVAILABLE: u8 = 69;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match Config::load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("anygate: bad configuration: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    // The WireGuard identity is checked before anything is opened or bound.
    let identity = match (&cfg.dataplane.private_key_file, cfg.dataplane.backend) {
        (_, BackendKind::None) | (None, _) => None,
        (Some(p), _) => match identity::load(p) {
            Ok(id) => Some(id),
            Err(e) => {
                eprintln!("anygate: refusing to start: dataplane.private-key-file: {e}");
                return ExitCode::from(EX_CONFIG);
            }
        },
    };
    let filter = tracing_subscriber::EnvFilter::new(&cfg.log_level);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    match cfg.log_format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .with_env_filter(filter)
            .init(),
        LogFormat::Text => tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .with_env_filter(filter)
            .init(),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let Some(grpc) = bind(cfg.listen, "listen").await else {
            return ExitCode::from(EX_UNAVAILABLE);
        };
        let Some(admin) = bind_optional(cfg.metrics_listen, "metrics-listen").await else {
            return ExitCode::from(EX_UNAVAILABLE);
        };
        let Some(portal) =
            bind_optional(cfg.portal.as_ref().map(|p| p.listen), "portal.listen").await
        else {
            return ExitCode::from(EX_UNAVAILABLE);
        };
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("signal received");
            s.cancel();
        });
        match (App {
            cfg,
            grpc,
            admin,
            portal,
            identity,
        })
        .run(shutdown)
        .await
        {
            Ok(()) => ExitCode::SUCCESS,
            // Unsafe permissions or unusable certificates: a configuration
            // problem (systemd does not restart into it).
            Err(e @ (AppError::Permissions(_) | AppError::Tls(_))) => {
                eprintln!("anygate: {e}");
                ExitCode::from(EX_CONFIG)
            }
            Err(e) => {
                eprintln!("anygate: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Binds a configured listener; None (after saying why) when it cannot.
async fn bind(addr: std::net::SocketAddr, key: &str) -> Option<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => Some(l),
        Err(e) => {
            eprintln!("anygate: cannot listen on {addr} ({key}): {e}");
            None
        }
    }
}

/// An optional listener: Some(None) when it is not configured.
async fn bind_optional(
    addr: Option<std::net::SocketAddr>,
    key: &str,
) -> Option<Option<tokio::net::TcpListener>> {
    match addr {
        None => Some(None),
        Some(a) => bind(a, key).await.map(Some),
    }
}
