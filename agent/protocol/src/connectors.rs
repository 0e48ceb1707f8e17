//! Network connectors, in their local form. On the platform a connector is an ARN;
//! the managed ones end in `aws-network-connector:<NAME>`. Locally the same ARN or the
//! bare name (`SHELL_INGRESS`) means the same thing; any other string is the
//! platform's business (a customer connector) and has no local effect.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Managed {
    AllIngress,
    HttpIngress,
    ShellIngress,
    InternetEgress,
}

impl Managed {
    pub fn name(self) -> &'static str {
        match self {
            Managed::AllIngress => "ALL_INGRESS",
            Managed::HttpIngress => "HTTP_INGRESS",
            Managed::ShellIngress => "SHELL_INGRESS",
            Managed::InternetEgress => "INTERNET_EGRESS",
        }
    }
}

/// The managed connector `connector` names, if it names one: `NAME`, or an ARN
/// (`arn:<partition>:...`) whose resource is `aws-network-connector:NAME`.
pub fn managed(connector: &str) -> Option<Managed> {
    let name = if connector.starts_with("arn:") {
        connector
            .strip_prefix("arn:")?
            .rsplit_once(":aws-network-connector:")?
            .1
    } else {
        connector
    };
    [
        Managed::AllIngress,
        Managed::HttpIngress,
        Managed::ShellIngress,
        Managed::InternetEgress,
    ]
    .into_iter()
    .find(|m| m.name() == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_names_and_arns_alike() {
        assert_eq!(managed("SHELL_INGRESS"), Some(Managed::ShellIngress));
        assert_eq!(
            managed("arn:aws:lambda:us-east-1:123456789012:aws-network-connector:INTERNET_EGRESS"),
            Some(Managed::InternetEgress)
        );
        assert_eq!(
            managed("arn:aws-cn:lambda:cn-north-1:123456789012:aws-network-connector:HTTP_INGRESS"),
            Some(Managed::HttpIngress)
        );
        assert_eq!(managed("shell_ingress"), None, "names are upper case");
        assert_eq!(
            managed("arn:aws:lambda:us-east-1:123456789012:network-connector:mine"),
            None
        );
        assert_eq!(
            managed("aws-network-connector:ALL_INGRESS"),
            None,
            "an ARN or a name"
        );
        assert_eq!(managed(""), None);
    }
}
