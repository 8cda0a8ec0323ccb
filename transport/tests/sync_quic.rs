//! Real QUIC over loopback: mutual TLS acceptance and every refusal, typed close codes on malformed input,
//! CRL reload while the hub runs, renewed certificates accepted and presented without a restart (node and
//! hub), and a connection surviving 10% loss through the fault relay.
//!
//! The test hub runs the real `SyncSession` over `FramedStream`, so handshake refusals come from the same
//! code a production hub uses. Every await that could hang is under a timeout.

use oms_protocol::sync::automerge::AutoCommit;
use oms_protocol::sync::{DocStore, Event, SessionConfig, StoreError, SyncSession};
use oms_protocol::wire::{DocId, ErrorCode, Frame, Hello, PROTOCOL_VERSION, PeerId};
use oms_transport::pki::{self, Identity, IssueOptions};
use oms_transport::relay::{Faults, Relay};
use oms_transport::tls::{ClientTlsFiles, ServerTlsFiles};
use oms_transport::{
    FramedStream, Limits, accept_bi, client_endpoint, close, close_code, connect, open_bi, peer_identity,
};
use quinn::Endpoint;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::time::timeout;

const STEP: Duration = Duration::from_secs(10);
const TENANT: &str = "acme";

/// A hub-side store with no documents: these tests are about the transport.
struct NoDocs;

impl DocStore for NoDocs {
    fn entitled(&self, _: &PeerId, _: &DocId) -> bool {
        false
    }
    fn docs_for(&self, _: &PeerId) -> Vec<DocId> {
        vec![]
    }
    fn doc_mut(&mut self, _: &DocId) -> Option<&mut AutoCommit> {
        None
    }
    fn create_doc(&mut self, doc: &DocId) -> Result<&mut AutoCommit, StoreError> {
        Err(StoreError { doc: doc.clone(), reason: "no documents here".into() })
    }
    fn load_sync_state(&self, _: &PeerId, _: &DocId) -> Option<Vec<u8>> {
        None
    }
    fn save_sync_state(&mut self, _: &PeerId, _: &DocId, _: Vec<u8>) {}
}

struct Pki {
    _dir: tempfile::TempDir,
    ca_dir: PathBuf,
    hub: ServerTlsFiles,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    pki::ca_init(&ca_dir, TENANT, time::Duration::days(1)).unwrap();
    let mut opts = IssueOptions::valid_for(time::Duration::days(1));
    opts.dns_names = vec!["localhost".into()];
    let hub = pki::issue(&ca_dir, &ca_dir, &Identity::hub(TENANT).unwrap(), &opts).unwrap();
    let hub = ServerTlsFiles {
        ca: ca_dir.join("ca.pem"),
        cert: hub.cert_path,
        key: hub.key_path,
        crl: pki::crl_path(&ca_dir),
        crl_check_interval_ms: 0,
        cert_check_interval_ms: 0,
    };
    Pki { _dir: dir, ca_dir, hub }
}

fn node_files(ca_dir: &Path, issuing_ca_dir: &Path, node: &str, opts: &IssueOptions) -> (ClientTlsFiles, Vec<u8>) {
    let issued = pki::issue(issuing_ca_dir, issuing_ca_dir, &Identity::node(TENANT, node).unwrap(), opts).unwrap();
    let files = ClientTlsFiles {
        ca: ca_dir.join("ca.pem"),
        crl: ca_dir.join("crl.pem"),
        crl_check_interval_ms: 0,
        cert: issued.cert_path,
        key: issued.key_path,
        cert_check_interval_ms: 0,
    };
    (files, issued.serial)
}

struct Hub {
    endpoint: Endpoint,
    accepted: Arc<Mutex<Vec<Identity>>>,
    /// Serial of every accepted peer certificate, in order.
    serials: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Hub {
    fn addr(&self) -> SocketAddr {
        self.endpoint.local_addr().unwrap()
    }
}

fn start_hub(files: &ServerTlsFiles) -> Hub {
    let endpoint = oms_transport::server_endpoint((Ipv4Addr::LOCALHOST, 0).into(), files, &Limits::default()).unwrap();
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let serials = Arc::new(Mutex::new(Vec::new()));
    let (ep, acc, ser) = (endpoint.clone(), accepted.clone(), serials.clone());
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            tokio::spawn(serve(incoming, acc.clone(), ser.clone()));
        }
    });
    Hub { endpoint, accepted, serials }
}

/// One hub connection: verified identity, one stream, the real server session.
async fn serve(incoming: quinn::Incoming, accepted: Arc<Mutex<Vec<Identity>>>, serials: Arc<Mutex<Vec<Vec<u8>>>>) {
    let Ok(Ok(conn)) = timeout(STEP, incoming).await else { return };
    let identity = match peer_identity(&conn) {
        Ok(id) => id,
        Err(e) => return close(&conn, ErrorCode::Unauthorized, &e.to_string()),
    };
    accepted.lock().unwrap().push(identity.clone());
    serials.lock().unwrap().push(oms_transport::peer_cert_info(&conn).unwrap().serial);
    let Ok((send, recv)) = accept_bi(&conn, STEP).await else { return };
    let mut stream = FramedStream::new(send, recv, 64 * 1024, STEP);
    let hub_id = PeerId::new(Identity::hub(TENANT).unwrap().uri()).unwrap();
    let peer = PeerId::new(identity.uri()).unwrap();
    let mut session = SyncSession::new_server(SessionConfig::default(), hub_id, peer, vec![0xFF], 0);
    let mut store = NoDocs;
    for _ in 0..10_000 {
        match stream.read_frame().await {
            Ok(Some(frame)) => session.handle_frame(&mut store, frame),
            Ok(None) => return,
            Err(e) => return close(&conn, e.code(), &e.to_string()),
        }
        while let Some(f) = session.poll_transmit() {
            if stream.write_frame(&f).await.is_err() {
                return;
            }
        }
        while let Some(ev) = session.poll_event() {
            if let Event::Closed { code, reason, .. } = ev {
                return close(&conn, code, &reason);
            }
        }
    }
}

fn node_endpoint(files: &ClientTlsFiles) -> Endpoint {
    client_endpoint((Ipv4Addr::LOCALHOST, 0).into(), files, &Limits::default()).unwrap()
}

fn hello(node: &str, version: u16) -> Frame {
    Frame::Hello(Hello {
        version,
        min_version: version,
        capabilities: 0,
        peer_id: PeerId::new(Identity::node(TENANT, node).unwrap().uri()).unwrap(),
        actor: vec![1],
    })
}

/// Connects, says Hello and expects HelloAck. Err says where it failed.
async fn handshake(endpoint: &Endpoint, addr: SocketAddr, node: &str) -> Result<quinn::Connection, String> {
    let conn = connect(endpoint, addr, "localhost", STEP).await.map_err(|e| format!("connect: {e}"))?;
    assert_eq!(peer_identity(&conn).unwrap(), Identity::hub(TENANT).unwrap());
    let (send, recv) = open_bi(&conn, STEP).await.map_err(|e| format!("open: {e}"))?;
    let mut s = FramedStream::new(send, recv, 64 * 1024, STEP);
    s.write_frame(&hello(node, PROTOCOL_VERSION)).await.map_err(|e| format!("write: {e}"))?;
    match s.read_frame().await {
        Ok(Some(Frame::HelloAck(_))) => Ok(conn),
        other => Err(format!("read: {other:?}")),
    }
}

#[tokio::test]
async fn good_node_is_accepted_and_refused_ones_are_not() {
    let pki = pki();
    let hub = start_hub(&pki.hub);
    let valid = IssueOptions::valid_for(time::Duration::days(1));

    let (good, _) = node_files(&pki.ca_dir, &pki.ca_dir, "good", &valid);
    let good_ep = node_endpoint(&good);
    handshake(&good_ep, hub.addr(), "good").await.expect("a valid node is accepted");

    // Certificate from another CA.
    let other = tempfile::tempdir().unwrap();
    pki::ca_init(other.path(), TENANT, time::Duration::days(1)).unwrap();
    let (foreign, _) = node_files(&pki.ca_dir, other.path(), "foreign", &valid);
    assert!(handshake(&node_endpoint(&foreign), hub.addr(), "foreign").await.is_err());

    // Expired certificate.
    let now = OffsetDateTime::now_utc();
    let expired_opts = IssueOptions {
        not_before: now - time::Duration::days(3),
        not_after: now - time::Duration::days(1),
        ..valid.clone()
    };
    let (expired, _) = node_files(&pki.ca_dir, &pki.ca_dir, "expired", &expired_opts);
    assert!(handshake(&node_endpoint(&expired), hub.addr(), "expired").await.is_err());

    // A leaf that claims to be a CA.
    let ca_leaf_opts = IssueOptions { claim_ca: true, ..valid.clone() };
    let (ca_leaf, _) = node_files(&pki.ca_dir, &pki.ca_dir, "ca-leaf", &ca_leaf_opts);
    assert!(handshake(&node_endpoint(&ca_leaf), hub.addr(), "ca-leaf").await.is_err());

    // No client certificate at all.
    let mut roots = rustls::RootCertStore::empty();
    for c in oms_transport::tls::load_certs(&pki.hub.ca).unwrap() {
        roots.add(c).unwrap();
    }
    let mut anon = rustls::ClientConfig::builder_with_provider(oms_transport::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    anon.alpn_protocols = vec![oms_protocol::wire::ALPN.to_vec()];
    let mut anon_ep = Endpoint::client((Ipv4Addr::LOCALHOST, 0).into()).unwrap();
    anon_ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(anon).unwrap(),
    )));
    let anon_result = async {
        let conn = connect(&anon_ep, hub.addr(), "localhost", STEP).await.map_err(|e| e.to_string())?;
        let (send, recv) = open_bi(&conn, STEP).await.map_err(|e| e.to_string())?;
        let mut s = FramedStream::new(send, recv, 1024, STEP);
        s.write_frame(&hello("anon", PROTOCOL_VERSION)).await.map_err(|e| e.to_string())?;
        s.read_frame().await.map_err(|e| e.to_string())
    }
    .await;
    assert!(!matches!(anon_result, Ok(Some(Frame::HelloAck(_)))), "anonymous client got {anon_result:?}");

    // The hub keeps serving, and only the good node ever got past TLS.
    handshake(&good_ep, hub.addr(), "good").await.expect("hub still serves after refusals");
    let accepted = hub.accepted.lock().unwrap().clone();
    assert_eq!(accepted, vec![Identity::node(TENANT, "good").unwrap(); 2]);
}

#[tokio::test]
async fn crl_updated_on_disk_refuses_new_handshakes() {
    let pki = pki();
    let hub = start_hub(&pki.hub);
    let (files, serial) = node_files(&pki.ca_dir, &pki.ca_dir, "n1", &IssueOptions::valid_for(time::Duration::days(1)));
    let ep = node_endpoint(&files);
    handshake(&ep, hub.addr(), "n1").await.expect("accepted before revocation");
    pki::revoke(&pki.ca_dir, &serial).unwrap();
    let refused = handshake(&ep, hub.addr(), "n1").await;
    assert!(refused.is_err(), "a revoked node must be refused on its next handshake");
    // Another node is unaffected.
    let (other, _) = node_files(&pki.ca_dir, &pki.ca_dir, "n2", &IssueOptions::valid_for(time::Duration::days(1)));
    handshake(&node_endpoint(&other), hub.addr(), "n2").await.expect("other nodes still accepted");
}

/// `pki::renew` gives a certificate with the same identity and a later `not_after` that the hub accepts in a
/// real handshake; the old certificate stays valid (it was not revoked).
#[tokio::test]
async fn renewed_certificate_is_accepted_with_a_later_not_after() {
    let pki = pki();
    let hub = start_hub(&pki.hub);
    let (files, old_serial) =
        node_files(&pki.ca_dir, &pki.ca_dir, "n1", &IssueOptions::valid_for(time::Duration::days(1)));
    // The old pair, as a node that has not received its new files yet still holds it.
    let old_dir = tempfile::tempdir().unwrap();
    let old =
        ClientTlsFiles { cert: old_dir.path().join("old.pem"), key: old_dir.path().join("old.key"), ..files.clone() };
    std::fs::copy(&files.cert, &old.cert).unwrap();
    std::fs::copy(&files.key, &old.key).unwrap();

    let id = Identity::node(TENANT, "n1").unwrap();
    let renewed = pki::renew(&pki.ca_dir, &pki.ca_dir, &id, time::Duration::days(2), pki::KeyChoice::Fresh).unwrap();
    assert_eq!(renewed.old.serial, old_serial);
    assert_eq!(renewed.new.identity, Some(id));
    assert!(
        renewed.new.not_after_unix_s > renewed.old.not_after_unix_s,
        "{} <= {}",
        renewed.new.not_after_unix_s,
        renewed.old.not_after_unix_s
    );
    let on_disk = pki::cert_info_pem(&std::fs::read_to_string(&files.cert).unwrap()).unwrap();
    assert_eq!(on_disk, renewed.new);

    handshake(&node_endpoint(&files), hub.addr(), "n1").await.expect("the renewed certificate is accepted");
    handshake(&node_endpoint(&old), hub.addr(), "n1").await.expect("the old certificate stays valid");
    assert_eq!(*hub.serials.lock().unwrap(), vec![renewed.new.serial.clone(), old_serial]);
}

/// A node's certificate files replaced by a renewed pair while the hub runs: the node's next connection, on
/// the same endpoint (no restart), presents the new certificate.
#[tokio::test]
async fn node_presents_its_renewed_certificate_on_its_next_connection() {
    let pki = pki();
    let hub = start_hub(&pki.hub);
    let (files, first) = node_files(&pki.ca_dir, &pki.ca_dir, "n1", &IssueOptions::valid_for(time::Duration::days(1)));
    let tls = oms_transport::tls::client_tls(&files).unwrap();
    let own = tls.own.clone();
    let ep =
        oms_transport::client_endpoint_with((Ipv4Addr::LOCALHOST, 0).into(), tls.config, &Limits::default()).unwrap();
    let conn = handshake(&ep, hub.addr(), "n1").await.expect("first certificate");
    assert_eq!(own.info().serial, first);

    let id = Identity::node(TENANT, "n1").unwrap();
    let renewed = pki::renew(&pki.ca_dir, &pki.ca_dir, &id, time::Duration::days(2), pki::KeyChoice::Fresh).unwrap();
    // The live connection keeps its certificate; a new one presents the renewed certificate.
    assert!(conn.close_reason().is_none());
    handshake(&ep, hub.addr(), "n1").await.expect("renewed certificate");
    assert_eq!(*hub.serials.lock().unwrap(), vec![first, renewed.new.serial.clone()]);
    assert_eq!(own.info(), renewed.new);
    assert_eq!(own.generation(), 1);

    // A key that does not match the certificate (files copied one after the other) keeps the previous pair.
    let other = tempfile::tempdir().unwrap();
    pki::ca_init(other.path(), TENANT, time::Duration::days(1)).unwrap();
    std::fs::copy(other.path().join("ca.key"), &files.key).unwrap();
    assert!(matches!(own.refresh(), oms_transport::tls::Reload::Failed(_)));
    handshake(&ep, hub.addr(), "n1").await.expect("the previous pair stays in force");
    assert_eq!(hub.serials.lock().unwrap().last(), Some(&renewed.new.serial));
}

/// The hub's certificate renewed while it runs: the next connection sees the new one.
#[tokio::test]
async fn hub_presents_its_renewed_certificate_without_a_restart() {
    let pki = pki();
    let hub = start_hub(&pki.hub);
    let (files, _) = node_files(&pki.ca_dir, &pki.ca_dir, "n1", &IssueOptions::valid_for(time::Duration::days(1)));
    let ep = node_endpoint(&files);
    let conn = handshake(&ep, hub.addr(), "n1").await.unwrap();
    let before = oms_transport::peer_cert_info(&conn).unwrap();
    let id = Identity::hub(TENANT).unwrap();
    let renewed = pki::renew(&pki.ca_dir, &pki.ca_dir, &id, time::Duration::days(3), pki::KeyChoice::Fresh).unwrap();
    assert_eq!(renewed.old, before);
    assert_eq!(renewed.new.dns_names, vec!["localhost".to_owned()]);
    let conn = handshake(&ep, hub.addr(), "n1").await.expect("the node accepts the renewed hub certificate");
    let after = oms_transport::peer_cert_info(&conn).unwrap();
    assert_eq!(after, renewed.new);
    assert!(after.not_after_unix_s > before.not_after_unix_s);
}

/// Sends raw bytes on a fresh stream of a good connection and returns the code the hub closed it with.
async fn close_code_for(ep: &Endpoint, addr: SocketAddr, bytes: &[u8], finish: bool) -> Option<ErrorCode> {
    let conn = connect(ep, addr, "localhost", STEP).await.unwrap();
    let (mut send, _recv) = open_bi(&conn, STEP).await.unwrap();
    timeout(STEP, send.write_all(bytes)).await.unwrap().unwrap();
    if finish {
        send.finish().unwrap();
    }
    let err = timeout(STEP, conn.closed()).await.expect("hub closes the connection");
    close_code(&err)
}

#[tokio::test]
async fn malformed_input_closes_with_typed_code_and_hub_keeps_serving() {
    let pki = pki();
    let hub = start_hub(&pki.hub);
    let (files, _) = node_files(&pki.ca_dir, &pki.ca_dir, "n1", &IssueOptions::valid_for(time::Duration::days(1)));
    let ep = node_endpoint(&files);

    let mut garbage = 8u32.to_le_bytes().to_vec();
    garbage.extend_from_slice(&[0xFF; 8]);
    assert_eq!(close_code_for(&ep, hub.addr(), &garbage, false).await, Some(ErrorCode::Malformed));

    let oversized = u32::MAX.to_le_bytes();
    assert_eq!(close_code_for(&ep, hub.addr(), &oversized, false).await, Some(ErrorCode::FrameTooLarge));

    let mut truncated = 100u32.to_le_bytes().to_vec();
    truncated.extend_from_slice(&[0; 10]);
    assert_eq!(close_code_for(&ep, hub.addr(), &truncated, true).await, Some(ErrorCode::Malformed));

    let future = oms_protocol::wire::encode_frame(&hello("n1", PROTOCOL_VERSION + 7)).unwrap();
    assert_eq!(close_code_for(&ep, hub.addr(), &future, false).await, Some(ErrorCode::UnsupportedVersion));

    let impostor = oms_protocol::wire::encode_frame(&hello("someone-else", PROTOCOL_VERSION)).unwrap();
    assert_eq!(close_code_for(&ep, hub.addr(), &impostor, false).await, Some(ErrorCode::Unauthorized));

    handshake(&ep, hub.addr(), "n1").await.expect("hub keeps serving after malformed peers");
}

#[tokio::test]
async fn connection_survives_ten_percent_loss_through_relay() {
    let pki = pki();
    let hub = start_hub(&pki.hub);
    let relay = Relay::start(hub.addr(), Faults { drop_pct: 10, ..Faults::default() }, 42).await.unwrap();
    let (files, _) = node_files(&pki.ca_dir, &pki.ca_dir, "n1", &IssueOptions::valid_for(time::Duration::days(1)));
    let ep = node_endpoint(&files);
    let conn = connect(&ep, relay.local_addr(), "localhost", STEP).await.expect("handshake through a lossy relay");
    let (send, recv) = open_bi(&conn, STEP).await.unwrap();
    let mut s = FramedStream::new(send, recv, 64 * 1024, STEP);
    s.write_frame(&hello("n1", PROTOCOL_VERSION)).await.unwrap();
    assert!(matches!(s.read_frame().await, Ok(Some(Frame::HelloAck(_)))));
    assert!(matches!(s.read_frame().await, Ok(Some(Frame::Manifest(_)))));
    for nonce in 0..50 {
        s.write_frame(&Frame::Ping { nonce }).await.unwrap();
        assert_eq!(s.read_frame().await.unwrap(), Some(Frame::Pong { nonce }));
    }
    let dropped = relay.stats().dropped.load(std::sync::atomic::Ordering::Relaxed);
    assert!(dropped > 0, "the relay dropped nothing, so this test proved nothing");

    // Partition, then heal: the connection carries on.
    relay.set_blackhole(true);
    tokio::time::sleep(Duration::from_millis(500)).await;
    relay.set_blackhole(false);
    s.write_frame(&Frame::Ping { nonce: 99 }).await.unwrap();
    assert_eq!(s.read_frame().await.unwrap(), Some(Frame::Pong { nonce: 99 }));
}

/// The refusals above fail for the reason they claim: checked on the hub's verifier directly.
#[test]
fn verifier_refuses_for_the_stated_reason() {
    use rustls::server::danger::ClientCertVerifier;
    let pki = pki();
    let verifier = oms_transport::tls::ReloadingClientVerifier::new(&pki.hub.ca, &pki.hub.crl, 0).unwrap();
    let valid = IssueOptions::valid_for(time::Duration::days(1));
    let verdict = |files: &ClientTlsFiles| {
        let cert = oms_transport::tls::load_certs(&files.cert).unwrap().remove(0);
        verifier
            .verify_client_cert(&cert, &[], rustls::pki_types::UnixTime::now())
            .map(|_| ())
            .map_err(|e| format!("{e:?}"))
    };
    let (good, serial) = node_files(&pki.ca_dir, &pki.ca_dir, "good", &valid);
    assert_eq!(verdict(&good), Ok(()));

    let now = OffsetDateTime::now_utc();
    let expired_opts = IssueOptions {
        not_before: now - time::Duration::days(3),
        not_after: now - time::Duration::days(1),
        ..valid.clone()
    };
    let (expired, _) = node_files(&pki.ca_dir, &pki.ca_dir, "expired", &expired_opts);
    assert!(verdict(&expired).unwrap_err().contains("Expired"), "{:?}", verdict(&expired));

    let (ca_leaf, _) =
        node_files(&pki.ca_dir, &pki.ca_dir, "ca-leaf", &IssueOptions { claim_ca: true, ..valid.clone() });
    assert!(verdict(&ca_leaf).unwrap_err().contains("CaUsedAsEndEntity"), "{:?}", verdict(&ca_leaf));

    let other = tempfile::tempdir().unwrap();
    pki::ca_init(other.path(), TENANT, time::Duration::days(1)).unwrap();
    let (foreign, _) = node_files(&pki.ca_dir, other.path(), "foreign", &valid);
    // The other CA has the same subject name, so webpki finds it by name and the signature check fails.
    let foreign_err = verdict(&foreign).unwrap_err();
    assert!(foreign_err.contains("BadSignature") || foreign_err.contains("UnknownIssuer"), "{foreign_err}");

    pki::revoke(&pki.ca_dir, &serial).unwrap();
    assert!(verdict(&good).unwrap_err().contains("Revoked"), "{:?}", verdict(&good));
}
