//! The CloudWatch Logs sink: PutLogEvents through aws-sdk-cloudwatchlogs, configured by hand (no aws-config):
//! static credentials from the run, the run's region, the SDK's endpoint variables.
//!
//! The SDK's own retries are off: the pipeline retries whole batches itself, so a
//! throttled batch is never retried on two levels, and it decides when to give up.

use super::{Delivery, PutError, Rejected, Sink, SinkFuture};
use crate::logs::lines::Event;
use aws_sdk_cloudwatchlogs::config::{
    retry::RetryConfig, timeout::TimeoutConfig, BehaviorVersion, Region,
};
use aws_sdk_cloudwatchlogs::error::{DisplayErrorContext, SdkError};
use aws_sdk_cloudwatchlogs::types::InputLogEvent;
use microvm_protocol::run::Credentials;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// `AWS_ENDPOINT_URL_CLOUDWATCH_LOGS`, else `AWS_ENDPOINT_URL` (the SDKs' convention).
pub fn endpoint_from_env(get: impl Fn(&str) -> Option<String>) -> Option<String> {
    get("AWS_ENDPOINT_URL_CLOUDWATCH_LOGS")
        .or_else(|| get("AWS_ENDPOINT_URL"))
        .filter(|s| !s.is_empty())
}

pub struct CloudWatch {
    client: aws_sdk_cloudwatchlogs::Client,
    group: String,
    stream: String,
    ready: AtomicBool,
}

fn describe<E: std::error::Error + 'static, R: std::fmt::Debug>(e: &SdkError<E, R>) -> String {
    format!("{}", DisplayErrorContext(e))
}

/// A failure worth telling the pipeline about: its description, and whether the
/// service refused the credentials.
struct Failure {
    description: String,
    credentials: bool,
}

/// None when the error says the resource already exists; else what failed.
fn created_already<E, R>(e: &SdkError<E, R>, exists: impl Fn(&E) -> bool) -> Option<Failure>
where
    E: std::error::Error + aws_sdk_cloudwatchlogs::error::ProvideErrorMetadata + 'static,
    R: std::fmt::Debug,
{
    match e.as_service_error() {
        Some(s) if exists(s) => None,
        _ => Some(Failure {
            description: describe(e),
            credentials: e
                .as_service_error()
                .and_then(|s| s.code())
                .is_some_and(super::refuses_credentials),
        }),
    }
}

fn tolerate(op: &str, name: &str, r: Result<(), Option<Failure>>) -> Result<(), PutError> {
    match r {
        Ok(()) | Err(None) => Ok(()),
        Err(Some(f)) if f.credentials => Err(PutError::credentials(format!(
            "{op} {name}: {}",
            f.description
        ))),
        Err(Some(f)) => Err(PutError::transient(format!(
            "{op} {name}: {}",
            f.description
        ))),
    }
}

impl CloudWatch {
    pub fn new(
        region: &str,
        endpoint: Option<&str>,
        c: &Credentials,
        group: &str,
        stream: &str,
    ) -> Self {
        let creds = aws_sdk_cloudwatchlogs::config::Credentials::new(
            &c.access_key_id,
            &c.secret_access_key,
            c.session_token.clone(),
            None,
            "microvm-run",
        );
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut conf = aws_sdk_cloudwatchlogs::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.to_string()))
            .credentials_provider(creds)
            .http_client(http)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(Duration::from_secs(20))
                    .build(),
            );
        let endpoint = endpoint
            .map(str::to_string)
            .or_else(|| endpoint_from_env(|k| std::env::var(k).ok()));
        if let Some(url) = endpoint {
            conf = conf.endpoint_url(url);
        }
        CloudWatch {
            client: aws_sdk_cloudwatchlogs::Client::from_conf(conf.build()),
            group: group.to_string(),
            stream: stream.to_string(),
            ready: AtomicBool::new(false),
        }
    }

    /// Create the group and the stream; "already exists" is success.
    async fn ensure(&self) -> Result<(), PutError> {
        let group = self
            .client
            .create_log_group()
            .log_group_name(&self.group)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| created_already(&e, |s| s.is_resource_already_exists_exception()));
        tolerate("CreateLogGroup", &self.group, group)?;
        let stream = self
            .client
            .create_log_stream()
            .log_group_name(&self.group)
            .log_stream_name(&self.stream)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| created_already(&e, |s| s.is_resource_already_exists_exception()));
        tolerate("CreateLogStream", &self.stream, stream)?;
        self.ready.store(true, Ordering::SeqCst);
        Ok(())
    }

    async fn put_batch(&self, batch: &[Event]) -> Result<Delivery, PutError> {
        if !self.ready.load(Ordering::SeqCst) {
            self.ensure().await?;
        }
        let events: Vec<InputLogEvent> = batch
            .iter()
            .filter_map(|e| {
                InputLogEvent::builder()
                    .timestamp(e.timestamp_ms)
                    .message(&e.message)
                    .build()
                    .ok()
            })
            .collect();
        let out = self
            .client
            .put_log_events()
            .log_group_name(&self.group)
            .log_stream_name(&self.stream)
            .set_log_events(Some(events))
            .send()
            .await;
        match out {
            Ok(o) => Ok(Delivery::Sent(
                o.rejected_log_events_info()
                    .map(|r| Rejected {
                        too_new_from: r.too_new_log_event_start_index().map(|i| i.max(0) as usize),
                        too_old_to: r.too_old_log_event_end_index().map(|i| i.max(0) as usize),
                        expired_to: r.expired_log_event_end_index().map(|i| i.max(0) as usize),
                    })
                    .unwrap_or_default(),
            )),
            Err(e) => {
                let service = e.as_service_error();
                if service.is_some_and(|s| s.is_resource_not_found_exception()) {
                    // Deleted under us, or never created: create again, then retry.
                    self.ready.store(false, Ordering::SeqCst);
                }
                let message = format!(
                    "PutLogEvents {}/{}: {}",
                    self.group,
                    self.stream,
                    describe(&e)
                );
                let code = aws_sdk_cloudwatchlogs::error::ProvideErrorMetadata::code(&e);
                Err(
                    if service.is_some_and(|s| s.is_invalid_parameter_exception()) {
                        PutError::permanent(message)
                    } else if code.is_some_and(super::refuses_credentials) {
                        PutError::credentials(message)
                    } else {
                        PutError::transient(message)
                    },
                )
            }
        }
    }
}

impl Sink for CloudWatch {
    fn put<'a>(&'a self, batch: &'a [Event]) -> SinkFuture<'a> {
        Box::pin(self.put_batch(batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_precedence_follows_the_sdk_convention() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            endpoint_from_env(env(&[
                ("AWS_ENDPOINT_URL", "http://general"),
                ("AWS_ENDPOINT_URL_CLOUDWATCH_LOGS", "http://logs")
            ])),
            Some("http://logs".into())
        );
        assert_eq!(
            endpoint_from_env(env(&[("AWS_ENDPOINT_URL", "http://general")])),
            Some("http://general".into())
        );
        assert_eq!(endpoint_from_env(env(&[])), None);
    }
}
