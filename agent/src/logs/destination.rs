//! Which logging union applies, and where it sends this MicroVM's events.

use microvm_protocol::run::Logging;
pub use microvm_protocol::status::Destination;
use microvm_protocol::DEFAULT_LOG_GROUP_PREFIX;

/// The effective logging union: the run's, else the image's, else CloudWatch defaults.
pub fn effective(run: Option<&Logging>, image: Option<&Logging>) -> Logging {
    run.or(image)
        .cloned()
        .unwrap_or(Logging::CloudWatch(Default::default()))
}

/// Where the effective union sends events, for this image and MicroVM.
pub fn destination(
    logging: &Logging,
    image_name: &str,
    microvm_id: &str,
    region: Option<&str>,
    endpoint: Option<&str>,
    has_credentials: bool,
) -> Result<Destination, String> {
    match logging {
        Logging::Disabled(_) => Ok(Destination::Disabled),
        Logging::CloudWatch(_) if !has_credentials => Ok(Destination::NoCredentials),
        Logging::CloudWatch(cw) => {
            let region = region
                .map(str::to_string)
                .or_else(|| std::env::var("AWS_REGION").ok())
                .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
                .ok_or("no region: the run request carries none and AWS_REGION is unset")?;
            Ok(Destination::CloudWatch {
                log_group: cw
                    .log_group
                    .clone()
                    .unwrap_or_else(|| format!("{DEFAULT_LOG_GROUP_PREFIX}{image_name}")),
                log_stream: cw
                    .log_stream
                    .clone()
                    .unwrap_or_else(|| microvm_id.to_string()),
                region,
                endpoint: endpoint.map(str::to_string),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use microvm_protocol::run::{CloudWatchLogging, Empty};

    #[test]
    fn effective_union_precedence() {
        let off = Logging::Disabled(Empty {});
        let cw = Logging::CloudWatch(CloudWatchLogging {
            log_group: Some("/g".into()),
            log_stream: None,
        });
        assert_eq!(effective(Some(&off), Some(&cw)), off);
        assert_eq!(effective(None, Some(&cw)), cw);
        assert_eq!(
            effective(None, None),
            Logging::CloudWatch(CloudWatchLogging::default())
        );
    }

    #[test]
    fn destinations_and_defaults() {
        let cw = Logging::CloudWatch(CloudWatchLogging::default());
        assert_eq!(
            destination(&cw, "img", "mvm-1", Some("eu-west-1"), None, true).unwrap(),
            Destination::CloudWatch {
                log_group: "/aws/lambda-microvms/img".into(),
                log_stream: "mvm-1".into(),
                region: "eu-west-1".into(),
                endpoint: None,
            }
        );
        assert_eq!(
            destination(&cw, "img", "mvm-1", Some("eu-west-1"), None, false).unwrap(),
            Destination::NoCredentials
        );
        assert_eq!(
            destination(&Logging::Disabled(Empty {}), "img", "m", None, None, true).unwrap(),
            Destination::Disabled
        );
        let named = Logging::CloudWatch(CloudWatchLogging {
            log_group: Some("/mine".into()),
            log_stream: Some("s".into()),
        });
        match destination(&named, "img", "m", Some("r"), None, true).unwrap() {
            Destination::CloudWatch {
                log_group,
                log_stream,
                ..
            } => {
                assert_eq!((log_group.as_str(), log_stream.as_str()), ("/mine", "s"))
            }
            d => panic!("{d:?}"),
        }
    }
}
