//! Whistle's public contract: the gRPC services and the event envelope, generated from `proto/whistle`.

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

pub mod codec;
pub mod datum;
pub mod rules;

/// Generated code, one module per proto package.
pub mod whistle {
    pub mod types {
        pub mod v1 {
            tonic::include_proto!("whistle.types.v1");
        }
    }
    pub mod events {
        pub mod v1 {
            tonic::include_proto!("whistle.events.v1");
        }
    }
    pub mod intake {
        pub mod v1 {
            tonic::include_proto!("whistle.intake.v1");
        }
    }
    pub mod dispatch {
        pub mod v1 {
            tonic::include_proto!("whistle.dispatch.v1");
        }
    }
    pub mod gateway {
        pub mod v1 {
            tonic::include_proto!("whistle.gateway.v1");
        }
    }
    pub mod evaluation {
        pub mod v1 {
            tonic::include_proto!("whistle.evaluation.v1");
        }
    }
}

pub use whistle::{dispatch::v1 as dispatch, evaluation::v1 as evaluation, events::v1 as events};
pub use whistle::{gateway::v1 as gateway, intake::v1 as intake, types::v1 as types};

/// Encoded `FileDescriptorSet` of every Whistle proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("whistle_descriptor");
