//! Ports for the servers and services a test starts, held for as long as
//! the test needs them.
//!
//! They are picked below the kernel's usual ephemeral range (32768 and up,
//! where `bind(0)` and outgoing connections take theirs), so the machine
//! hands none of them to anyone else, and held by a listener on the same
//! port of 127.0.0.2, which every holder of `Ports` tries to bind first, so
//! no two tests running at once share one. (A port taken with `bind(0)` and
//! let go could be handed to another test before the server bound it: that
//! test's service then answered this test's readiness checks, and this one's
//! exited unseen.) A server stopped and started again on its port (the
//! restart tests) finds it still free: nobody else is given it meanwhile.

use rand::Rng;

#[derive(Debug, Default)]
pub struct Ports(Vec<std::net::TcpListener>);

impl Ports {
    /// A free port of 127.0.0.1 that no other holder of `Ports` is given
    /// while this one lives. Servers given it must listen on 127.0.0.1 only.
    pub fn port(&mut self) -> u16 {
        for _ in 0..1_000 {
            let port = rand::thread_rng().gen_range(20_000..32_000);
            let Ok(held) = std::net::TcpListener::bind(("127.0.0.2", port)) else { continue };
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
                continue; // something else listens there
            }
            self.0.push(held);
            return port;
        }
        panic!("no port of 20000-31999 could be held on both 127.0.0.1 and 127.0.0.2 (is 127.0.0.2 on the loopback?)");
    }

    /// The same as `127.0.0.1:<port>`.
    pub fn reserve(&mut self) -> String {
        format!("127.0.0.1:{}", self.port())
    }
}
