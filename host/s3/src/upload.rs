//! Uploads: one PUT for small bodies, a multipart upload in [`PART_SIZE`]
//! parts for large files (aborted on any failure, so no orphan parts stay
//! billed). Every body and every part carries its SHA-256, which the server
//! checks before it accepts the bytes.

use std::path::Path;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use base64::Engine as _;
use sentinel_engine::ports::StorageError;
use sha2::Digest;
use tokio::io::AsyncReadExt;

use crate::{S3Sink, io_err, sdk_err};

/// The size of one part of a multipart upload; files larger than one part
/// go up in parts.
pub const PART_SIZE: usize = 16 << 20;

fn sha256_b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(bytes))
}

/// Puts `bytes` at `key` in one request.
pub(crate) async fn put_bytes(
    sink: &S3Sink,
    key: &str,
    bytes: Vec<u8>,
    content_type: &str,
) -> Result<(), StorageError> {
    let full = sink.key(key);
    sink.client
        .put_object()
        .bucket(&sink.cfg.bucket)
        .key(&full)
        .content_type(content_type)
        .checksum_sha256(sha256_b64(&bytes))
        .body(ByteStream::from(bytes))
        .send()
        .await
        .map_err(|e| sdk_err(format!("put s3://{}/{full}", sink.cfg.bucket), e))?;
    Ok(())
}

/// Puts a file at `key`: in one request when it fits a part, else in parts.
pub(crate) async fn put_file(
    sink: &S3Sink,
    key: &str,
    file: &Path,
    content_type: &str,
) -> Result<(), StorageError> {
    let mut f = tokio::fs::File::open(file)
        .await
        .map_err(|e| io_err(format!("open {}", file.display()), e))?;
    let size = f
        .metadata()
        .await
        .map_err(|e| io_err(format!("stat {}", file.display()), e))?
        .len();
    if size <= PART_SIZE as u64 {
        let mut bytes = Vec::with_capacity(size as usize);
        f.read_to_end(&mut bytes)
            .await
            .map_err(|e| io_err(format!("read {}", file.display()), e))?;
        return put_bytes(sink, key, bytes, content_type).await;
    }
    let full = sink.key(key);
    let bucket = &sink.cfg.bucket;
    let created = sink
        .client
        .create_multipart_upload()
        .bucket(bucket)
        .key(&full)
        .content_type(content_type)
        .checksum_algorithm(ChecksumAlgorithm::Sha256)
        .send()
        .await
        .map_err(|e| sdk_err(format!("start upload of s3://{bucket}/{full}"), e))?;
    let upload_id = created
        .upload_id()
        .ok_or_else(|| {
            StorageError::transient(format!("upload of s3://{bucket}/{full}"), "no upload id")
        })?
        .to_string();
    let parts = upload_parts(sink, &full, &upload_id, &mut f).await;
    let done = match parts {
        Ok(parts) => sink
            .client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(&full)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map(|_| ())
            .map_err(|e| sdk_err(format!("finish upload of s3://{bucket}/{full}"), e)),
        Err(e) => Err(e),
    };
    if done.is_err() {
        let _ = sink
            .client
            .abort_multipart_upload()
            .bucket(bucket)
            .key(&full)
            .upload_id(&upload_id)
            .send()
            .await;
    }
    done
}

async fn upload_parts(
    sink: &S3Sink,
    full: &str,
    upload_id: &str,
    f: &mut tokio::fs::File,
) -> Result<Vec<CompletedPart>, StorageError> {
    let bucket = &sink.cfg.bucket;
    let mut parts = Vec::new();
    for number in 1.. {
        let mut buf = Vec::with_capacity(PART_SIZE);
        let n = (&mut *f)
            .take(PART_SIZE as u64)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| io_err(format!("read part {number} of {full}"), e))?;
        if n == 0 {
            break;
        }
        let sum = sha256_b64(&buf);
        let answer = sink
            .client
            .upload_part()
            .bucket(bucket)
            .key(full)
            .upload_id(upload_id)
            .part_number(number)
            .checksum_sha256(&sum)
            .body(ByteStream::from(buf))
            .send()
            .await
            .map_err(|e| sdk_err(format!("upload part {number} of s3://{bucket}/{full}"), e))?;
        parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(answer.e_tag().map(str::to_string))
                .checksum_sha256(sum)
                .build(),
        );
    }
    Ok(parts)
}
