//! Parsers of the values people type (addresses), shared by the CLI and the API so that both
//! accept exactly the same inputs.

use alloy_primitives::Address;

/// A string that is not an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadAddress(pub String);

impl std::fmt::Display for BadAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} is not an address (expected 0x and 40 hex digits)", self.0)
    }
}

impl std::error::Error for BadAddress {}

/// Parses `0x` followed by exactly 40 hex digits, in any case (no checksum is required).
pub fn parse_address(s: &str) -> Result<Address, BadAddress> {
    let hex = s.strip_prefix("0x").ok_or_else(|| BadAddress(s.to_string()))?;
    if hex.len() != 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(BadAddress(s.to_string()));
    }
    s.parse().map_err(|_| BadAddress(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_0x_and_40_hex_digits_is_an_address() {
        let a = "0x00000000000000000000000000000000000000aB";
        assert_eq!(parse_address(a).unwrap(), a.parse::<Address>().unwrap());
        for bad in [
            "",
            "0x",
            "00000000000000000000000000000000000000aB00",
            "0x123",
            "0xzz",
            &format!("{a}0"),
            "0X00000000000000000000000000000000000000ab",
            "0x00000000000000000000000000000000000000é",
        ] {
            assert!(parse_address(bad).is_err(), "{bad:?}");
        }
    }
}
