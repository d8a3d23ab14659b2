//! A TCP proxy on 127.0.0.1 that can be switched off and on: simulates the database
//! going away (connections refused, live connections cut) without touching the real
//! PostgreSQL, which other tests share.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

pub struct TcpProxy {
    /// The proxy's own address (the same port across off/on).
    pub addr: SocketAddr,
    target: SocketAddr,
    accept: Option<JoinHandle<()>>,
    connections: Arc<Mutex<JoinSet<()>>>,
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    // Connections cut by `down` leave TIME_WAIT entries on the port.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}

impl TcpProxy {
    /// A running proxy on `127.0.0.1:<ephemeral>` forwarding to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = bind("127.0.0.1:0".parse().unwrap()).expect("bind the proxy");
        let addr = listener.local_addr().unwrap();
        let mut proxy = Self {
            addr,
            target,
            accept: None,
            connections: Arc::new(Mutex::new(JoinSet::new())),
        };
        proxy.serve(listener);
        proxy
    }

    /// A proxy to the PostgreSQL the tests use (host and port of the admin URL).
    pub async fn to_postgres() -> Self {
        let url = super::admin_url();
        let options: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
        let host = match options.get_host() {
            "localhost" => "127.0.0.1",
            other => other,
        };
        let target = format!("{host}:{}", options.get_port())
            .parse()
            .expect("the test database is on an IP address");
        Self::start(target).await
    }

    /// `url` with its host and port replaced by the proxy's.
    pub fn url(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("a URL");
        let (userinfo, rest) = match rest.split_once('@') {
            Some((u, r)) => (format!("{u}@"), r),
            None => (String::new(), rest),
        };
        let path = rest.find('/').map(|i| &rest[i..]).unwrap_or("");
        format!("{scheme}://{userinfo}{}{path}", self.addr)
    }

    fn serve(&mut self, listener: TcpListener) {
        let target = self.target;
        let connections = self.connections.clone();
        self.accept = Some(tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let _ = inbound.set_nodelay(true);
                connections.lock().unwrap().spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = outbound.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
        }));
    }

    pub fn is_up(&self) -> bool {
        self.accept.is_some()
    }

    /// Stops listening (new connections are refused) and cuts every live connection.
    pub async fn down(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
            let _ = accept.await;
        }
        let mut connections = std::mem::take(&mut *self.connections.lock().unwrap());
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }

    /// Listens again, on the same port.
    pub async fn up(&mut self) {
        if self.is_up() {
            return;
        }
        let listener = bind(self.addr).expect("rebind the proxy's port");
        self.serve(listener);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        self.connections.lock().unwrap().abort_all();
    }
}
