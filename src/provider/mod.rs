//! The contacto-virtual API: client, domain types that are valid once built, webhook payloads.
// TEMPORARY stand-in until the provider branch merges.
#[derive(Debug, Clone)]
pub struct Mobile(String);
impl Mobile {
    pub fn parse(s: &str) -> Result<Mobile, String> {
        let d: String = s.chars().filter(|c| c.is_ascii_digit()).collect();
        if d.len() == 12 { Ok(Mobile(d)) } else { Err(format!("bad mobile {s}")) }
    }
    pub fn as_str(&self) -> &str { &self.0 }
}
