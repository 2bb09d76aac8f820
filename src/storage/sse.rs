//! S3's server-side encryption of the objects a storage writes (SSE-S3, SSE-KMS, SSE-C), as
//! its configuration says, and the headers each request carries for it (pure).

use aws_sdk_s3::types::ServerSideEncryption;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::config::S3Config;

/// How objects are encrypted by the S3 server.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Sse {
    /// As the bucket's default says.
    #[default]
    Default,
    /// SSE-S3 (`AES256`).
    S3,
    /// SSE-KMS, with this key or the account's default one.
    Kms(Option<String>),
    /// SSE-C: the key (base64) and its MD5 (base64), sent with every request on an object.
    Customer { key: String, md5: String },
}

impl std::fmt::Debug for Sse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Default => f.write_str("Default"),
            Self::S3 => f.write_str("S3"),
            Self::Kms(key) => write!(f, "Kms({key:?})"),
            Self::Customer { .. } => f.write_str("Customer(..)"),
        }
    }
}

/// The SSE-C headers of one request (all `None` without SSE-C). No `Debug`: it holds the key.
#[derive(Default)]
pub struct CustomerHeaders {
    pub algorithm: Option<String>,
    pub key: Option<String>,
    pub md5: Option<String>,
}

impl Sse {
    /// What `config` asks for; `Err` says what is wrong with it.
    pub fn of(config: &S3Config) -> Result<Self, &'static str> {
        let customer = config.sse_customer_key.as_ref();
        let mode = config.server_side_encryption.as_deref();
        match (mode, customer, &config.sse_kms_key_id) {
            (Some(_), Some(_), _) => Err(
                "sse_customer_key (SSE-C) and server_side_encryption exclude each other: set one",
            ),
            (None, Some(key), None) => {
                let raw = STANDARD
                    .decode(key.expose().trim())
                    .map_err(|_| "sse_customer_key is not base64 (of a 32-byte key)")?;
                if raw.len() != 32 {
                    return Err("sse_customer_key must be 32 bytes (256 bits), base64");
                }
                use md5::Digest;
                Ok(Self::Customer {
                    key: STANDARD.encode(&raw),
                    md5: STANDARD.encode(md5::Md5::digest(&raw)),
                })
            }
            (Some("aws:kms"), None, key) => Ok(Self::Kms(key.clone())),
            (_, _, Some(_)) => Err("sse_kms_key_id goes with server_side_encryption: aws:kms"),
            (Some("AES256"), None, None) => Ok(Self::S3),
            (Some(_), None, None) => {
                Err("server_side_encryption must be AES256 (SSE-S3) or aws:kms (SSE-KMS)")
            }
            (None, None, None) => Ok(Self::Default),
        }
    }

    /// The `x-amz-server-side-encryption` of a write and its KMS key.
    pub fn on_write(&self) -> (Option<ServerSideEncryption>, Option<String>) {
        match self {
            Self::S3 => (Some(ServerSideEncryption::Aes256), None),
            Self::Kms(key) => (Some(ServerSideEncryption::AwsKms), key.clone()),
            Self::Default | Self::Customer { .. } => (None, None),
        }
    }

    /// The SSE-C headers of any request that reads or writes an object's data.
    pub fn customer(&self) -> CustomerHeaders {
        match self {
            Self::Customer { key, md5 } => CustomerHeaders {
                algorithm: Some("AES256".into()),
                key: Some(key.clone()),
                md5: Some(md5.clone()),
            },
            _ => CustomerHeaders::default(),
        }
    }
}

/// Makes one of an SSE-C header a server repeats with the same value: SeaweedFS (4.48)
/// answers a ranged read of an SSE-C object with `x-amz-server-side-encryption-customer-key-md5`
/// twice, which the SDK cannot parse. Two different values are left for the SDK to refuse.
#[derive(Debug)]
pub struct OneOfRepeatedHeaders;

/// The headers [`OneOfRepeatedHeaders`] takes once.
const SINGLE_HEADERS: [&str; 2] = [
    "x-amz-server-side-encryption-customer-key-md5",
    "x-amz-server-side-encryption-customer-algorithm",
];

impl aws_sdk_s3::config::Intercept for OneOfRepeatedHeaders {
    fn name(&self) -> &'static str {
        "OneOfRepeatedHeaders"
    }

    fn modify_before_deserialization(
        &self,
        context: &mut aws_sdk_s3::config::interceptors::BeforeDeserializationInterceptorContextMut<
            '_,
        >,
        _: &aws_sdk_s3::config::RuntimeComponents,
        _: &mut aws_sdk_s3::config::ConfigBag,
    ) -> Result<(), aws_sdk_s3::error::BoxError> {
        let headers = context.response_mut().headers_mut();
        for name in SINGLE_HEADERS {
            let values: Vec<String> = headers.get_all(name).map(str::to_owned).collect();
            if values.len() > 1 && values.iter().all(|v| v == &values[0]) {
                headers.insert(name, values[0].clone());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn config(mode: Option<&str>, kms: Option<&str>, customer: Option<&str>) -> S3Config {
        S3Config {
            server_side_encryption: mode.map(Into::into),
            sse_kms_key_id: kms.map(Into::into),
            sse_customer_key: customer.map(Secret::new),
            ..S3Config::default()
        }
    }

    #[test]
    fn each_mode_is_taken_and_mixtures_refused() {
        assert_eq!(Sse::of(&config(None, None, None)), Ok(Sse::Default));
        assert_eq!(Sse::of(&config(Some("AES256"), None, None)), Ok(Sse::S3));
        let kms = Sse::of(&config(Some("aws:kms"), Some("k1"), None)).unwrap();
        assert_eq!(
            kms.on_write(),
            (Some(ServerSideEncryption::AwsKms), Some("k1".into()))
        );
        assert!(
            kms.customer().key.is_none(),
            "SSE-KMS sends no SSE-C headers"
        );
        let key = STANDARD.encode([7u8; 32]);
        let Ok(Sse::Customer { md5, .. }) = Sse::of(&config(None, None, Some(&key))) else {
            panic!("SSE-C");
        };
        // As `md5sum` gives it (cb81c010…), in base64.
        assert_eq!(md5, "y4HAEFCYWuvAXWFTtA1Qpg==");
        for bad in [
            config(Some("AES256"), None, Some(&key)),
            config(Some("aes256"), None, None),
            config(Some("AES256"), Some("k1"), None),
            config(None, None, Some("not base64!")),
            config(None, None, Some(&STANDARD.encode([7u8; 16]))),
        ] {
            assert!(Sse::of(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_customer_key_is_never_printed() {
        let key = STANDARD.encode([9u8; 32]);
        let sse = Sse::of(&config(None, None, Some(&key))).unwrap();
        assert!(!format!("{sse:?}").contains(&key));
    }
}
