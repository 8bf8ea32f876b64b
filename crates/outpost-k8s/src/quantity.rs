//! Just enough of Kubernetes' resource quantities to compare a step's request with the runner's
//! maxima: CPU in millicores (`500m`, `2`, `1.5`), memory in bytes (`512Mi`, `1G`, `1e9`).

/// A CPU quantity in millicores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cpu(pub u64);

/// A memory (or storage) quantity in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Memory(pub u64);

/// The number and suffix of a quantity, e.g. (`1.5`, `Gi`).
fn split(text: &str) -> Result<(f64, &str), String> {
    let t = text.trim();
    let end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(end);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a quantity (e.g. `500m`, `2`, `512Mi`)"))?;
    if !n.is_finite() || n < 0.0 {
        return Err(format!("`{text}` is not a quantity"));
    }
    Ok((n, suffix))
}

impl Cpu {
    pub fn parse(text: &str) -> Result<Cpu, String> {
        let (n, suffix) = split(text)?;
        let milli = match suffix {
            "" => n * 1000.0,
            "m" => n,
            _ => return Err(format!("`{text}` is not a CPU quantity (e.g. `500m`, `2`)")),
        };
        Ok(Cpu(milli.ceil() as u64))
    }
}

impl Memory {
    pub fn parse(text: &str) -> Result<Memory, String> {
        let (n, suffix) = split(text)?;
        let factor: f64 = match suffix {
            "" => 1.0,
            "k" => 1e3,
            "M" => 1e6,
            "G" => 1e9,
            "T" => 1e12,
            "Ki" => 1024.0,
            "Mi" => 1024.0 * 1024.0,
            "Gi" => 1024.0 * 1024.0 * 1024.0,
            "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
            _ => {
                return Err(format!(
                    "`{text}` is not a memory quantity (e.g. `512Mi`, `1G`, `1048576`)"
                ));
            }
        };
        Ok(Memory((n * factor).ceil() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        let cpu = |t: &str| Cpu::parse(t).ok().map(|c| c.0);
        assert_eq!(cpu("500m"), Some(500));
        assert_eq!(cpu("2"), Some(2000));
        assert_eq!(cpu("1.5"), Some(1500));
        assert_eq!(cpu("2Gi"), None);
        let mem = |t: &str| Memory::parse(t).ok().map(|m| m.0);
        assert_eq!(mem("512Mi"), Some(512 << 20));
        assert_eq!(mem("1G"), Some(1_000_000_000));
        assert_eq!(mem("1048576"), Some(1 << 20));
        assert_eq!(mem("12x"), None);
        assert_eq!(mem(""), None);
    }
}
