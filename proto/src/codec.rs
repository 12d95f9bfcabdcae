//! The gRPC codec of every Whistle service (configured in `build.rs` through `codec_path`):
//! tonic-prost's encoding, with one difference in decoding. A message that cannot be decoded (a
//! string that is not UTF-8, a truncated or malformed message) is the caller's mistake, so it is
//! INVALID_ARGUMENT naming the field prost reports, in the same `google.rpc.BadRequest` shape as
//! every other field error, where tonic-prost answers INTERNAL.

use prost::Message;
use std::marker::PhantomData;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::{ProstCodec, ProstEncoder};
use tonic_types::{ErrorDetails, StatusExt};

/// INVALID_ARGUMENT with the message `field: reason` and one `BadRequest` field violation: the one
/// shape of a field error in the contract (`whistle_platform::validation::FieldError` uses it too).
pub fn field_violation(field: &str, reason: &str) -> Status {
    let mut details = ErrorDetails::new();
    details.add_bad_request_violation(field, reason);
    Status::with_error_details(Code::InvalidArgument, format!("{field}: {reason}"), details)
}

/// [`ProstCodec`] whose decoder answers INVALID_ARGUMENT for undecodable messages.
#[derive(Debug, Clone)]
pub struct WhistleCodec<T, U> {
    prost: ProstCodec<T, U>,
}

impl<T, U> Default for WhistleCodec<T, U> {
    fn default() -> Self {
        Self {
            prost: ProstCodec::default(),
        }
    }
}

impl<T, U> Codec for WhistleCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = WhistleDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.prost.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        WhistleDecoder {
            buffer_settings: BufferSettings::default(),
            _message: PhantomData,
        }
    }
}

/// Decodes `U` with prost; see [`decode_error_status`] for what a failure becomes.
#[derive(Debug, Clone)]
pub struct WhistleDecoder<U> {
    buffer_settings: BufferSettings,
    _message: PhantomData<U>,
}

impl<U: Message + Default> Decoder for WhistleDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        U::decode(buf)
            .map(Some)
            .map_err(|error| decode_error_status(&error))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.buffer_settings
    }
}

/// INVALID_ARGUMENT for a message prost could not decode: a field violation on the field path
/// prost reports (`attachments.media_type`; repeated fields carry no index, a oneof is named by
/// the oneof, `action.note`), or a plain
/// INVALID_ARGUMENT when prost names no field (a truncated message).
pub fn decode_error_status(error: &prost::DecodeError) -> Status {
    let (field, reason) = field_path_of(error);
    if field.is_empty() {
        return Status::invalid_argument(format!("message could not be decoded: {reason}"));
    }
    field_violation(&field, &reason)
}

/// The field path and the cause of a decoding error. prost keeps its (message, field) stack
/// private and shows it only in its `Display`, innermost first:
/// `failed to decode Protobuf message: Attachment.media_type: SubmitReportRequest.attachments: invalid string value: data is not UTF-8 encoded`.
fn field_path_of(error: &prost::DecodeError) -> (String, String) {
    let text = error.to_string();
    let mut rest = text
        .strip_prefix("failed to decode Protobuf message: ")
        .unwrap_or(&text);
    let mut fields = Vec::new();
    while let Some((segment, after)) = rest.split_once(": ") {
        match segment.split_once('.') {
            Some((message, field)) if is_identifier(message) && is_identifier(field) => {
                fields.push(field);
                rest = after;
            }
            _ => break,
        }
    }
    fields.reverse();
    (fields.join("."), rest.to_string())
}

fn is_identifier(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::RecordDepartmentActionRequest;
    use crate::intake::SubmitReportRequest;
    use tonic_types::StatusExt;

    /// `attachments` (field 8) holding one attachment whose `media_type` (field 3) is not UTF-8.
    fn report_with_invalid_media_type() -> Vec<u8> {
        let attachment = [0x1a, 0x02, 0xff, 0xfe];
        let mut bytes = vec![0x0a, 0x03, b'r', b'-', b'1', 0x42, attachment.len() as u8];
        bytes.extend_from_slice(&attachment);
        bytes
    }

    #[test]
    fn invalid_utf8_names_the_nested_field() {
        let error = SubmitReportRequest::decode(report_with_invalid_media_type().as_slice())
            .expect_err("not UTF-8");
        let status = decode_error_status(&error);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().starts_with("attachments.media_type: "),
            "{}",
            status.message()
        );
        let details = status.get_error_details();
        let violation = &details.bad_request().expect("bad request").field_violations[0];
        assert_eq!(violation.field, "attachments.media_type");
        assert!(violation.description.contains("UTF-8"), "{violation:?}");
    }

    #[test]
    fn invalid_utf8_in_a_oneof_is_named_too() {
        // action_id = "a", then the `progress` action (field 12) whose note (field 1) is not UTF-8
        let bytes = [0x0a, 0x01, b'a', 0x62, 0x03, 0x0a, 0x01, 0xc0];
        let error = RecordDepartmentActionRequest::decode(bytes.as_slice()).expect_err("not UTF-8");
        let status = decode_error_status(&error);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            // prost names the oneof (`action`), not its variant (`progress`)
            status.message() == "action.note: invalid string value: data is not UTF-8 encoded",
            "{}",
            status.message()
        );
    }

    #[test]
    fn a_truncated_message_is_invalid_argument_without_a_field() {
        // a key whose varint never ends
        let error = SubmitReportRequest::decode([0xff, 0xff].as_slice()).expect_err("short");
        let status = decode_error_status(&error);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().starts_with("message could not be decoded"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn field_violations_carry_bad_request_details() {
        let status = field_violation("place.address", "at most 500 characters");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "place.address: at most 500 characters");
        let details = status.get_error_details();
        let violations = &details.bad_request().expect("bad request").field_violations;
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].field, "place.address");
    }
}
