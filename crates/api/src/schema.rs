//! Schema pieces the `ToSchema` attributes cannot state, and the patterns they repeat.
//!
//! The OpenAPI document must say exactly what the server takes (API.md §1), so generated
//! clients and contract tests (schemathesis) neither send what is refused nor miss what is
//! taken. Lengths in the document count characters where the server counts UTF-8 bytes; the
//! two agree for ASCII, and the descriptions say "bytes".

use tollgate_core::input::{
    METADATA_ENTRIES_MAX, METADATA_KEY_BYTES_MAX, METADATA_VALUE_BYTES_MAX,
};
use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
use utoipa::openapi::{Object, Schema};

/// A user or account id: no control characters (Unicode `Cc`), 1–256 bytes apart.
pub const SUBJECT_ID_PATTERN: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$";
/// An event name or a metadata key: `[A-Za-z0-9_.:-]`, lengths apart.
pub const NAME_PATTERN: &str = "^[A-Za-z0-9_.:-]+$";
/// Free text of people (reasons, notes): no control characters but tab, line feed and
/// carriage return.
pub const TEXT_PATTERN: &str = "^[^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F]*$";

fn string(pattern: &str, max_length: usize) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(max_length))
        .pattern(Some(pattern))
}

/// A metadata map of a request: at most 32 entries, keys `[A-Za-z0-9_.:-]{1,64}`, string
/// values of at most 512 bytes; absent or `null` is none.
pub fn metadata_or_null() -> Object {
    let key = string(NAME_PATTERN, METADATA_KEY_BYTES_MAX).build();
    let value = ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(METADATA_VALUE_BYTES_MAX))
        .build();
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
        .max_properties(Some(METADATA_ENTRIES_MAX))
        .property_names(Some(Schema::Object(key)))
        .additional_properties(Some(Schema::Object(value)))
        .description(Some(
            "At most 32 entries; keys `[A-Za-z0-9_.:-]{1,64}`, values at most 512 bytes",
        ))
        .build()
}
