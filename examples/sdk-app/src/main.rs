//! An application as image authors write them: the AWS SDK for Rust with no
//! configuration of its own. Credentials come from the default chain (in a MicroVM:
//! the agent's IMDSv2 service), the region from the default chain (the profile file
//! the agent names in `AWS_CONFIG_FILE`), the endpoint from the SDK's standard
//! variable if the image sets one (`AWS_ENDPOINT_URL_CLOUDWATCH_LOGS`).
//!
//! It writes one event to CloudWatch Logs (group `$SDK_APP_GROUP`, default `/sdk-app`,
//! stream `direct`) as soon as the chain yields credentials and a region (before
//! `/run` it yields none: the metadata service answers 404), says so on stdout, and
//! then stays up as the MicroVM's application.

use aws_config::BehaviorVersion;
use aws_sdk_cloudwatchlogs::types::InputLogEvent;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const STREAM: &str = "direct";

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let group = std::env::var("SDK_APP_GROUP").unwrap_or_else(|_| "/sdk-app".into());
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let conf = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http.clone())
            .load()
            .await;
        let region = conf.region().map(|r| r.to_string());
        match put(&aws_sdk_cloudwatchlogs::Client::new(&conf), &group).await {
            Ok(()) => {
                println!(
                    "sdk-app: {{\"put\":\"ok\",\"region\":{:?},\"attempts\":{attempts}}}",
                    region.unwrap_or_default()
                );
                break;
            }
            Err(e) if attempts % 10 == 1 => eprintln!("sdk-app: not yet ({attempts}): {e}"),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

async fn put(client: &aws_sdk_cloudwatchlogs::Client, group: &str) -> Result<(), String> {
    let exists = |e: &str| e.contains("ResourceAlreadyExists");
    if let Err(e) = client.create_log_group().log_group_name(group).send().await {
        let e = format!("{:?}", e);
        if !exists(&e) {
            return Err(e);
        }
    }
    if let Err(e) = client
        .create_log_stream()
        .log_group_name(group)
        .log_stream_name(STREAM)
        .send()
        .await
    {
        let e = format!("{:?}", e);
        if !exists(&e) {
            return Err(e);
        }
    }
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let event = InputLogEvent::builder()
        .timestamp(now_ms)
        .message("hello from the AWS SDK inside the guest")
        .build()
        .map_err(|e| e.to_string())?;
    client
        .put_log_events()
        .log_group_name(group)
        .log_stream_name(STREAM)
        .log_events(event)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| format!("{e:?}"))
}
