//! Hostile clients: sockets bound to chosen loopback addresses, real sessions after which
//! crafted bytes are sent, and a handshake done by hand for what the real one never sends
//! (oversized Nacks, replays, reflections).

use crate::common::*;
use peerpool::socket::{self, Established};
use peerpool_proto::connection_message::{
    ConnectionMessage, ConnectionMetadata, SupportedVersions,
};
use peerpool_proto::crypto::{ChannelKey, NoncePair};
use peerpool_proto::framing::{ChunkOpener, ChunkSealer, MAX_CHUNK_PAYLOAD};
use peerpool_proto::handshake::Direction;
use peerpool_proto::identity::Identity;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The `i`-th address of an attacking group: 127.0.`group`.1 onwards, 250 per /24, the
/// next ones in the following /24s. Honest peers are on 127.0.0.x.
pub fn attacker_ip(group: u8, i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, group + (i / 250) as u8, 1 + (i % 250) as u8)
}

/// Connects to `to` from `ip` (any port).
pub async fn connect_from(ip: Ipv4Addr, to: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::from((ip, 0)))?;
    let stream = s.connect(to).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A real, established session with the node from `ip`, with identity `seed`; the caller
/// then writes crafted chunks with its sealer.
pub async fn session(to: SocketAddr, ip: Ipv4Addr, seed: u64) -> Established<TcpStream> {
    let stream = connect_from(ip, to).await.unwrap();
    let auth = socket::authenticate(
        stream,
        client_config(identity(seed)),
        Direction::Outgoing,
        [seed as u8; 24],
    )
    .await
    .unwrap();
    let version = auth.connection_message.version.clone();
    auth.accept(version).await.unwrap()
}

/// Reads one `u16`-length-prefixed frame (a connection message or a chunk), prefix
/// included.
pub async fn read_frame(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut frame = vec![0u8; 2];
    stream.read_exact(&mut frame).await?;
    let len = u16::from_be_bytes([frame[0], frame[1]]) as usize;
    frame.resize(2 + len, 0);
    stream.read_exact(&mut frame[2..]).await?;
    Ok(frame)
}

/// Our connection message, framed.
pub fn connection_frame(identity: &Identity, nonce: [u8; 24]) -> Vec<u8> {
    ConnectionMessage {
        port: None,
        public_key: identity.public_key,
        proof_of_work_stamp: identity.proof_of_work_stamp,
        message_nonce: nonce,
        version: SupportedVersions::octez("TEZOS").announced(),
    }
    .encode_frame()
    .unwrap()
}

/// A handshake done by hand up to both metadata chunks.
pub struct Raw {
    pub stream: TcpStream,
    pub sealer: ChunkSealer,
    pub opener: ChunkOpener,
    /// Every byte we wrote, in order.
    pub sent: Vec<u8>,
}

impl Raw {
    /// Exchanges connection messages and metadata with the peer at the other end of
    /// `stream`; `incoming` is our side's role (true when the peer dialled us).
    pub async fn handshake(
        mut stream: TcpStream,
        identity: &Identity,
        incoming: bool,
    ) -> io::Result<Raw> {
        let ours = connection_frame(identity, [0x5a; 24]);
        stream.write_all(&ours).await?;
        let theirs = read_frame(&mut stream).await?;
        let msg = ConnectionMessage::decode_body(&theirs[2..]).unwrap();
        let key = ChannelKey::derive(&msg.public_key, &identity.secret_key).unwrap();
        let nonces = NoncePair::derive(&ours, &theirs, incoming);
        let mut sealer = ChunkSealer::new(key.clone(), nonces.local, MAX_CHUNK_PAYLOAD);
        let mut opener = ChunkOpener::new(key, nonces.remote);
        let mut sent = ours;
        let at = sent.len();
        sealer.seal_chunk(&ConnectionMetadata::default().encode(), &mut sent);
        stream.write_all(&sent[at..]).await?;
        let mut metadata = read_frame(&mut stream).await?;
        opener
            .open(&mut metadata[2..])
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Raw {
            stream,
            sealer,
            opener,
            sent,
        })
    }

    /// Seals `plaintext` as one chunk and writes it (recorded in `sent`).
    pub async fn send_chunk(&mut self, plaintext: &[u8]) -> io::Result<()> {
        let at = self.sent.len();
        self.sealer.seal_chunk(plaintext, &mut self.sent);
        self.stream.write_all(&self.sent[at..]).await
    }

    /// Reads and opens the peer's next chunk.
    pub async fn recv_chunk(&mut self) -> io::Result<Vec<u8>> {
        let mut chunk = read_frame(&mut self.stream).await?;
        let plain = self
            .opener
            .open(&mut chunk[2..])
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(plain.to_vec())
    }
}

/// Waits until the node closes `stream` (EOF or reset), discarding what it sends.
pub async fn wait_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
