//! Finding the primary that Redis Sentinels name, and following it through
//! failovers.
//!
//! A background task asks the Sentinels (`SENTINEL get-master-addr-by-name`,
//! one Sentinel after another until one answers, each bounded by the connect
//! timeout) at start, every [`POLL_INTERVAL`], and soon after any call fails
//! in a way a failover explains (connection lost, timeout, `READONLY` from a
//! demoted primary). When the address changes it publishes a new connection;
//! calls take whichever connection is current and never wait for a lookup
//! beyond their own deadline. The task ends when the store is dropped.

use std::sync::Arc;
use std::time::Duration;

use floodgate_core::{Error, StoreError};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::client::client;
use crate::config::{ConfigError, TlsOptions, redact};
use crate::error::no_primary;

/// How often the Sentinels are asked when nothing goes wrong. After a
/// failover the old primary, if it still runs, accepts writes until the
/// Sentinels demote it (seconds later), and those writes are then lost: this
/// bounds how long floodgate keeps counting there.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// The least time between two lookups: failing calls during a failover ask
/// for one each, and the Sentinels need not hear about every one.
const MIN_LOOKUP_SPACING: Duration = Duration::from_millis(50);

/// What the lookups have found so far.
#[derive(Clone)]
enum Known {
    /// No lookup has finished yet.
    Nothing,
    /// The last lookup found no primary, and none was known before.
    Failed(String),
    /// The primary at this address, and a connection to it.
    Primary {
        host: String,
        port: u16,
        conn: ConnectionManager,
    },
}

/// The primary behind Sentinels, as the lookup task last found it.
pub(crate) struct SentinelPrimary {
    /// The task's findings.
    known: watch::Receiver<Known>,
    /// Wakes the task for an early lookup.
    wake: Arc<Notify>,
}

/// What the lookup task needs, owned by it.
struct Lookup {
    /// One client per Sentinel, in the configured order.
    sentinels: Vec<Client>,
    /// The Sentinel connections opened so far, kept between lookups.
    open: Vec<Option<MultiplexedConnection>>,
    /// The name Sentinels know the primary by.
    master: String,
    /// Credentials, database and scheme for the primary; the address is
    /// replaced by the one Sentinels give.
    template: ConnectionInfo,
    /// Certificates for a `rediss://` primary.
    tls: TlsOptions,
    /// Reconnection settings of the primary's connection.
    manager_config: ConnectionManagerConfig,
    /// Bound on each Sentinel's connection and answer.
    connect_timeout: Duration,
}

impl SentinelPrimary {
    /// Starts the lookup task on the current Tokio runtime.
    pub(crate) fn start(
        sentinels: &[String],
        master: &str,
        primary_url: Option<&str>,
        tls: &TlsOptions,
        manager_config: ConnectionManagerConfig,
        connect_timeout: Duration,
    ) -> Result<Self, ConfigError> {
        let url_error = |url: &str| {
            let url = redact(url);
            move |source| ConfigError::Url { url, source }
        };
        let mut clients = Vec::with_capacity(sentinels.len());
        for url in sentinels {
            clients.push(client(url.as_str(), tls).map_err(url_error(url))?);
        }
        let template = match primary_url {
            Some(url) => url.into_connection_info().map_err(url_error(url))?,
            None => ("127.0.0.1", 6379)
                .into_connection_info()
                .map_err(url_error("redis://127.0.0.1:6379"))?,
        };
        let lookup = Lookup {
            open: vec![None; clients.len()],
            sentinels: clients,
            master: master.to_owned(),
            template,
            tls: tls.clone(),
            manager_config,
            connect_timeout,
        };
        let (publish, known) = watch::channel(Known::Nothing);
        let wake = Arc::new(Notify::new());
        tokio::spawn(lookup.run(publish, Arc::clone(&wake)));
        Ok(SentinelPrimary { known, wake })
    }

    /// The current primary's connection. Before the first lookup has
    /// finished, waits for it until `deadline`.
    pub(crate) async fn primary(
        &self,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<ConnectionManager, Error> {
        let mut known = self.known.clone();
        let found =
            tokio::time::timeout_at(deadline, known.wait_for(|k| !matches!(k, Known::Nothing)))
                .await;
        match found {
            Err(_) => Err(Error::Store(StoreError::timeout(timeout))),
            Ok(Err(_)) => Err(no_primary("the Sentinel lookup task has stopped")),
            Ok(Ok(k)) => match &*k {
                Known::Primary { conn, .. } => Ok(conn.clone()),
                Known::Failed(why) => {
                    let why = why.clone();
                    drop(k);
                    self.ask_again();
                    Err(no_primary(&why))
                }
                Known::Nothing => Err(no_primary("no lookup has finished")),
            },
        }
    }

    /// Asks the task for a lookup soon (many asks make one lookup).
    pub(crate) fn ask_again(&self) {
        self.wake.notify_one();
    }
}

impl Lookup {
    /// Looks the primary up until every [`SentinelPrimary`] receiver is gone.
    async fn run(mut self, publish: watch::Sender<Known>, wake: Arc<Notify>) {
        loop {
            match self.find().await {
                Ok((host, port)) => {
                    let same = matches!(&*publish.borrow(),
                        Known::Primary { host: h, port: p, .. } if *h == host && *p == port);
                    if !same {
                        match self.connect(&host, port) {
                            Ok(conn) => {
                                publish.send_replace(Known::Primary { host, port, conn });
                            }
                            Err(e) => {
                                publish.send_replace(Known::Failed(format!(
                                    "cannot use {host}:{port}: {e}"
                                )));
                            }
                        }
                    }
                }
                // A primary found before stays: it may be back, and failing
                // calls wake this task again.
                Err(why) => {
                    publish.send_if_modified(|k| {
                        if matches!(k, Known::Primary { .. }) {
                            false
                        } else {
                            *k = Known::Failed(why);
                            true
                        }
                    });
                }
            }
            tokio::select! {
                () = publish.closed() => return,
                () = tokio::time::sleep(MIN_LOOKUP_SPACING) => {}
            }
            tokio::select! {
                () = publish.closed() => return,
                () = wake.notified() => {}
                () = tokio::time::sleep(POLL_INTERVAL) => {}
            }
        }
    }

    /// The primary's address from the first Sentinel that names one.
    async fn find(&mut self) -> Result<(String, u16), String> {
        let mut errors = Vec::new();
        for i in 0..self.sentinels.len() {
            match tokio::time::timeout(self.connect_timeout, self.ask(i)).await {
                Ok(Ok(Some(addr))) => return Ok(addr),
                Ok(Ok(None)) => errors.push(format!(
                    "sentinel {} does not know master {:?}",
                    i + 1,
                    self.master
                )),
                Ok(Err(e)) => {
                    self.open[i] = None;
                    errors.push(format!("sentinel {}: {e}", i + 1));
                }
                Err(_) => {
                    self.open[i] = None;
                    errors.push(format!("sentinel {}: no answer in time", i + 1));
                }
            }
        }
        Err(errors.join("; "))
    }

    /// Asks Sentinel `i` for the primary's address.
    async fn ask(&mut self, i: usize) -> redis::RedisResult<Option<(String, u16)>> {
        let conn = match &mut self.open[i] {
            Some(conn) => conn,
            slot => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.connect_timeout))
                    .set_response_timeout(Some(self.connect_timeout));
                let conn = self.sentinels[i]
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                slot.insert(conn)
            }
        };
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.master)
            .query_async(conn)
            .await
    }

    /// A lazy connection to the primary at `host:port`.
    fn connect(&self, host: &str, port: u16) -> redis::RedisResult<ConnectionManager> {
        let addr = match self.template.addr() {
            ConnectionAddr::TcpTls { insecure, .. } => ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: *insecure,
                tls_params: None,
            },
            _ => ConnectionAddr::Tcp(host.to_owned(), port),
        };
        let info = self.template.clone().set_addr(addr);
        ConnectionManager::new_lazy_with_config(
            client(info, &self.tls)?,
            self.manager_config.clone(),
        )
    }
}
