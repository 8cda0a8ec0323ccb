use super::inspect::first_cert_der;
use super::*;
use std::net::IpAddr;
#[cfg(unix)]
use std::path::Path;
use time::{Duration, OffsetDateTime};

#[test]
fn identity_uri_roundtrip() {
    for id in [Identity::node("acme", "berlin-1").unwrap(), Identity::hub("acme").unwrap()] {
        assert_eq!(Identity::from_uri(&id.uri()).unwrap(), id);
    }
    for bad in ["oms://acme/node/a/b", "http://acme/hub", "oms://ACME/hub", "oms:///hub", "oms://a/node/"] {
        assert!(Identity::from_uri(bad).is_err(), "{bad}");
    }
}

#[test]
fn issued_cert_carries_identity_and_revocation_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    ca_init(dir.path(), "acme", Duration::days(1)).unwrap();
    assert!(matches!(ca_init(dir.path(), "acme", Duration::days(1)), Err(PkiError::CaExists { .. })));
    let id = Identity::node("acme", "n1").unwrap();
    let issued = issue(dir.path(), dir.path(), &id, &IssueOptions::valid_for(Duration::days(1))).unwrap();
    let pem = std::fs::read_to_string(&issued.cert_path).unwrap();
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    assert_eq!(identity_from_cert_der(&der).unwrap(), id);
    revoke(dir.path(), &issued.serial).unwrap();
    revoke(dir.path(), &issued.serial).unwrap();
    assert_eq!(revoked_serials(dir.path()).unwrap(), vec![issued.serial]);
}

/// Permission bits of `path`.
#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[cfg(unix)]
#[test]
fn private_keys_are_written_0600_and_certificates_0644() {
    let dir = tempfile::tempdir().unwrap();
    ca_init(dir.path(), "acme", Duration::days(1)).unwrap();
    let node = issue(
        dir.path(),
        dir.path(),
        &Identity::node("acme", "n1").unwrap(),
        &IssueOptions::valid_for(Duration::days(1)),
    )
    .unwrap();
    let hub =
        issue(dir.path(), dir.path(), &Identity::hub("acme").unwrap(), &IssueOptions::valid_for(Duration::days(1)))
            .unwrap();
    for key in [dir.path().join("ca.key"), node.key_path.clone(), hub.key_path.clone()] {
        assert_eq!(mode(&key), 0o600, "{}", key.display());
    }
    // Certificates may be read by anyone (the umask may take more away, never add).
    for cert in [dir.path().join("ca.pem"), crl_path(dir.path()), node.cert_path.clone()] {
        assert_eq!(mode(&cert) & !0o644, 0, "{}", cert.display());
    }
    // A key renewed over a key that an older version left world-readable is 0600 again.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&node.key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let id = Identity::node("acme", "n1").unwrap();
    renew(dir.path(), dir.path(), &id, Duration::days(2), KeyChoice::Reuse).unwrap();
    assert_eq!(mode(&node.key_path), 0o600);
}

#[cfg(unix)]
#[test]
fn ca_init_makes_the_pki_directory_0700_and_tightens_an_existing_one() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let fresh = tmp.path().join("new").join("pki");
    ca_init(&fresh, "acme", Duration::days(1)).unwrap();
    assert_eq!(mode(&fresh), 0o700);
    let existing = tmp.path().join("open");
    std::fs::create_dir(&existing).unwrap();
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o755)).unwrap();
    ca_init(&existing, "acme", Duration::days(1)).unwrap();
    assert_eq!(mode(&existing), 0o700);
}

#[test]
fn renew_archives_the_replaced_pair_and_keeps_the_last_few() {
    let dir = tempfile::tempdir().unwrap();
    ca_init(dir.path(), "acme", Duration::days(365)).unwrap();
    let id = Identity::node("acme", "n1").unwrap();
    // A node whose id extends n1's: its archive entries are not n1's.
    let other = Identity::node("acme", "n1-b").unwrap();
    let first = issue(dir.path(), dir.path(), &id, &IssueOptions::valid_for(Duration::days(10))).unwrap();
    issue(dir.path(), dir.path(), &other, &IssueOptions::valid_for(Duration::days(10))).unwrap();
    renew(dir.path(), dir.path(), &other, Duration::days(10), KeyChoice::Fresh).unwrap();
    let (cert_before, key_before) = (std::fs::read(&first.cert_path).unwrap(), std::fs::read(&first.key_path).unwrap());
    let renewed = renew(dir.path(), dir.path(), &id, Duration::days(20), KeyChoice::Fresh).unwrap();
    let archive = dir.path().join(ARCHIVE_DIR);
    let base = format!("node-n1-{}", hex(&first.serial));
    assert_eq!(renewed.archived.cert_path, archive.join(format!("{base}.pem")));
    assert_eq!(renewed.archived.key_path, Some(archive.join(format!("{base}.key"))));
    assert_eq!(std::fs::read(&renewed.archived.cert_path).unwrap(), cert_before);
    assert_eq!(std::fs::read(archive.join(format!("{base}.key"))).unwrap(), key_before);
    #[cfg(unix)]
    {
        assert_eq!(mode(&archive.join(format!("{base}.key"))), 0o600);
        assert_eq!(mode(&archive), 0o700);
    }
    // Renew again and again: the archive keeps the newest ARCHIVE_KEEP replaced pairs of n1.
    let mut replaced = vec![first.serial.clone()];
    let mut current = renewed.new.serial.clone();
    for _ in 0..ARCHIVE_KEEP + 1 {
        let r = renew(dir.path(), dir.path(), &id, Duration::days(20), KeyChoice::Fresh).unwrap();
        assert_eq!(r.old.serial, current);
        replaced.push(current);
        current = r.new.serial;
    }
    let mut names: Vec<String> =
        std::fs::read_dir(&archive).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    let ours = |ext: &str| {
        names.iter().filter(|n| n.starts_with("node-n1-") && !n.starts_with("node-n1-b-") && n.ends_with(ext)).count()
    };
    assert_eq!((ours(".pem"), ours(".key")), (ARCHIVE_KEEP, ARCHIVE_KEEP), "{names:?}");
    for (i, serial) in replaced.iter().enumerate() {
        let kept = archive.join(format!("node-n1-{}.pem", hex(serial))).exists();
        assert_eq!(kept, i >= replaced.len() - ARCHIVE_KEEP, "replaced #{i}: {names:?}");
    }
    assert!(names.iter().any(|n| n.starts_with("node-n1-b-")), "the other node's archive was pruned: {names:?}");
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
}

#[test]
fn files_are_replaced_by_rename_and_no_temporary_file_stays() {
    let dir = tempfile::tempdir().unwrap();
    ca_init(dir.path(), "acme", Duration::days(1)).unwrap();
    let issued = issue(
        dir.path(),
        dir.path(),
        &Identity::node("acme", "n1").unwrap(),
        &IssueOptions::valid_for(Duration::days(1)),
    )
    .unwrap();
    // A reader holding the old CRL open (here: a second link to it) keeps reading the whole old file.
    let before = std::fs::read(crl_path(dir.path())).unwrap();
    let held = dir.path().join("held-crl");
    std::fs::hard_link(crl_path(dir.path()), &held).unwrap();
    revoke(dir.path(), &issued.serial).unwrap();
    assert_eq!(std::fs::read(&held).unwrap(), before, "the CRL was rewritten in place");
    assert_ne!(std::fs::read(crl_path(dir.path())).unwrap(), before);
    let names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
}

#[test]
fn a_certificate_with_less_than_30_days_left_is_expiring_soon() {
    // The rule itself, at its boundary.
    let day = 86_400;
    assert!(!expiry(1_000 + 30 * day, 1_000).expiring_soon);
    assert!(expiry(1_000 + 30 * day - 1, 1_000).expiring_soon);
    assert_eq!(expiry(1_000, 1_500), Expiry { expires_in_s: -500, expiring_soon: true });
    // On real certificates: one issued for 10 days is expiring soon, one for 90 is not.
    let dir = tempfile::tempdir().unwrap();
    ca_init(dir.path(), "acme", Duration::days(365)).unwrap();
    let now = OffsetDateTime::now_utc().unix_timestamp();
    for (days, soon) in [(10, true), (90, false)] {
        let id = Identity::node("acme", &format!("n{days}")).unwrap();
        let issued = issue(dir.path(), dir.path(), &id, &IssueOptions::valid_for(Duration::days(days))).unwrap();
        let info = cert_info_pem(&std::fs::read_to_string(&issued.cert_path).unwrap()).unwrap();
        let e = info.expiry(now);
        assert_eq!(e.expiring_soon, soon, "{days} days: {e:?}");
        assert!((e.expires_in_s - days * day).abs() <= 60, "{days} days: {e:?}");
    }
}

#[test]
fn an_http_certificate_names_its_server_and_is_no_identity() {
    let dir = tempfile::tempdir().unwrap();
    ca_init(dir.path(), "acme", Duration::days(365)).unwrap();
    let opts = IssueOptions {
        dns_names: vec!["localhost".into(), "wh1.example".into()],
        ip_addresses: vec![IpAddr::from([127, 0, 0, 1]), "::1".parse().unwrap()],
        ..IssueOptions::valid_for(Duration::days(90))
    };
    let issued = issue_http(dir.path(), dir.path(), "node-wh1", &opts).unwrap();
    assert_eq!(issued.cert_path, dir.path().join("http-node-wh1.pem"));
    assert_eq!(issued.key_path, dir.path().join("http-node-wh1.key"));
    let pem = std::fs::read_to_string(&issued.cert_path).unwrap();
    let info = server_cert_info_pem(&pem).unwrap();
    assert_eq!(info.identity, None);
    assert_eq!(info.dns_names, ["localhost", "wh1.example"]);
    assert_eq!(info.ip_addresses, opts.ip_addresses);
    assert_eq!(info.serial, issued.serial);
    // Not an oms identity, whichever way it is read.
    assert!(matches!(cert_info_pem(&pem), Err(PkiError::BadIdentity { .. })));
    let der = first_cert_der(&pem).unwrap();
    assert!(identity_from_cert_der(&der).is_err());
    // Server authentication only: no client certificate for mutual TLS.
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth, "{eku:?}");
    assert!(issue_http(dir.path(), dir.path(), "Bad/Name", &opts).is_err());

    // Renewal keeps names and addresses, with a new serial; an identity's file is not renewed as HTTP.
    let renewed = renew_http(dir.path(), dir.path(), "node-wh1", Duration::days(30), KeyChoice::Fresh).unwrap();
    assert_eq!(renewed.old.serial, issued.serial);
    assert_ne!(renewed.new.serial, issued.serial);
    assert_eq!((renewed.new.dns_names.clone(), renewed.new.ip_addresses.clone()), (info.dns_names, info.ip_addresses));
    assert_eq!(renewed.new.identity, None);
    issue(dir.path(), dir.path(), &Identity::hub("acme").unwrap(), &IssueOptions::valid_for(Duration::days(1)))
        .unwrap();
    std::fs::copy(dir.path().join("hub.pem"), dir.path().join("http-hub.pem")).unwrap();
    assert!(matches!(
        renew_http(dir.path(), dir.path(), "hub", Duration::days(1), KeyChoice::Fresh),
        Err(PkiError::NotHttp { .. })
    ));
    // And an HTTP certificate under an identity's name is not renewed as that identity.
    std::fs::copy(&issued.cert_path, dir.path().join("node-n1.pem")).unwrap();
    let n1 = Identity::node("acme", "n1").unwrap();
    assert!(renew(dir.path(), dir.path(), &n1, Duration::days(1), KeyChoice::Fresh).is_err());
}

#[test]
fn renewal_keeps_identity_and_names_with_a_new_serial_and_validity() {
    let dir = tempfile::tempdir().unwrap();
    ca_init(dir.path(), "acme", Duration::days(365)).unwrap();
    let hub = Identity::hub("acme").unwrap();
    let opts = IssueOptions {
        dns_names: vec!["hub.acme.test".into(), "localhost".into()],
        ..IssueOptions::valid_for(Duration::days(10))
    };
    let issued = issue(dir.path(), dir.path(), &hub, &opts).unwrap();
    let key_before = std::fs::read(&issued.key_path).unwrap();

    let fresh = renew(dir.path(), dir.path(), &hub, Duration::days(90), KeyChoice::Fresh).unwrap();
    assert_eq!(fresh.old.serial, issued.serial);
    assert_ne!(fresh.new.serial, fresh.old.serial);
    assert_eq!(fresh.new.identity, Some(hub.clone()));
    assert_eq!(fresh.new.dns_names, vec!["hub.acme.test".to_owned(), "localhost".to_owned()]);
    assert!(fresh.new.not_after_unix_s > fresh.old.not_after_unix_s + 79 * 86_400);
    let key_fresh = std::fs::read(&issued.key_path).unwrap();
    assert_ne!(key_fresh, key_before, "a fresh key was asked for");

    let reused = renew(dir.path(), dir.path(), &hub, Duration::days(91), KeyChoice::Reuse).unwrap();
    assert_eq!(std::fs::read(&issued.key_path).unwrap(), key_fresh, "the key was to be kept");
    assert_ne!(reused.new.serial, fresh.new.serial);

    // Renewing a certificate file under another identity's name is refused.
    std::fs::copy(&issued.cert_path, dir.path().join("node-n1.pem")).unwrap();
    let n1 = Identity::node("acme", "n1").unwrap();
    assert!(matches!(
        renew(dir.path(), dir.path(), &n1, Duration::days(1), KeyChoice::Fresh),
        Err(PkiError::WrongIdentity { .. })
    ));
    // Nothing to renew.
    let n2 = Identity::node("acme", "n2").unwrap();
    assert!(matches!(
        renew(dir.path(), dir.path(), &n2, Duration::days(1), KeyChoice::Fresh),
        Err(PkiError::Io { .. })
    ));
}
