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

impl dispatch::ActionRefusal {
    /// The refusal of one action of `RecordDepartmentActions`, from the status
    /// `RecordDepartmentAction` would have failed with (its details kept as sent).
    pub fn from_status(status: &tonic::Status) -> Self {
        Self {
            code: status.code() as i32,
            message: status.message().to_string(),
            details: status.details().to_vec(),
        }
    }

    /// The status `RecordDepartmentAction` would have failed with.
    pub fn into_status(self) -> tonic::Status {
        tonic::Status::with_details(
            tonic::Code::from_i32(self.code),
            self.message,
            self.details.into(),
        )
    }
}

/// Encoded `FileDescriptorSet` of every Whistle proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("whistle_descriptor");
