//! Baton's wire types: the gRPC services of the live market, package `baton.v1`
//! (`proto/baton/v1/*.proto`).
//!
//! - `MarketService`: signed order intake, cancels, a participant's orders and fills, public
//!   interval results.
//! - `AdminService`: the operator's commands, each signed by the operator key.
//! - `AuditService`: ledger head, entries and inclusion proofs.
//!
//! [`wire`] holds what both ends must agree on beyond the messages: id formats, the decimal
//! grammar, admin command ↔ RPC, role and direction names.
//!
//! [`receipt`] holds the operator's signed order receipts: built by the server once per
//! group-commit batch, checked by the SDK and `baton audit check-receipt`.
//!
//! Numbers travel as decimal strings, never floats; the signing rule is documented in
//! `market.proto`: a signature covers exactly the bytes of the serialized inner message.

/// `package baton.v1`.
pub mod v1 {
    #![allow(missing_docs, unreachable_pub, clippy::all)]
    tonic::include_proto!("baton.v1");
}

pub mod receipt;
pub mod wire;

/// The encoded `FileDescriptorSet` of `baton.v1`, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("baton_v1_descriptor");

#[cfg(test)]
mod tests {
    use prost::Message;

    #[test]
    fn descriptor_set_decodes_and_names_the_three_services() {
        let set = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).unwrap();
        let services: Vec<String> = set
            .file
            .iter()
            .filter(|f| f.package() == "baton.v1")
            .flat_map(|f| f.service.iter().map(|s| s.name().to_string()))
            .collect();
        for s in ["MarketService", "AdminService", "AuditService"] {
            assert!(
                services.iter().any(|x| x == s),
                "{s} missing from {services:?}"
            );
        }
    }
}
