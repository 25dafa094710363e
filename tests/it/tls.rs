//! `baton serve` over TLS: a real rustls server on 127.0.0.1:0 with a certificate generated for
//! the test, a client that trusts only that certificate, and a plaintext client that fails.

use std::time::Duration;

use baton_proto::v1 as pb;
use baton_server::TlsIdentity;
use pb::market_service_client::MarketServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_market_serves_over_tls_and_refuses_plaintext() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_pem = cert.cert.pem();
    let key_pem = cert.signing_key.serialize_pem();
    let db = support::TempLedger::sqlite();
    let mut config = support::config(&db.url);
    config.tls = Some(TlsIdentity {
        cert_pem: cert_pem.clone().into_bytes(),
        key_pem: key_pem.into_bytes(),
    });
    let mut server = support::Server::start(config).await;
    let addr = server.addr;

    // A client that trusts the server's certificate gets a real answer (no result yet).
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&cert_pem))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("a TLS connection with the trusted certificate");
    let err = MarketServiceClient::new(channel)
        .get_interval_result(pb::GetIntervalResultRequest {
            interval_start: support::T0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // So does the SDK's TLS connection: public reads work over it.
    let sdk = baton_client::connect_tls(&addr.to_string(), cert_pem.as_bytes(), Some("localhost"))
        .await
        .expect("the SDK connects over TLS");
    let info = baton_client::PublicClient::new(sdk)
        .market_info()
        .await
        .expect("market info over TLS");
    assert!(info.network_loaded);

    // A plaintext client cannot talk to it.
    let plain = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await;
    if let Ok(ch) = plain {
        let r = MarketServiceClient::new(ch)
            .get_interval_result(pb::GetIntervalResultRequest {
                interval_start: support::T0,
            })
            .await;
        let e = r.expect_err("plaintext gRPC to a TLS server fails");
        assert_ne!(e.code(), Code::NotFound, "{e:?}");
    }

    // A client that does not trust the certificate is refused at the handshake.
    let untrusted = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(ClientTlsConfig::new().domain_name("localhost"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await;
    assert!(untrusted.is_err(), "an untrusted certificate is refused");

    server.stop().await;
}
