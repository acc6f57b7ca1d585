//! The forwarding floor of this machine (`greenroom_sfu::io::floor`): the CPU one forwarded
//! packet costs at least (copy + header rewrite + SRTP AES-GCM + `sendmmsg` x32 to loopback),
//! measured at 100-byte and 1200-byte payloads just before a run, so that the server's CPU per
//! forwarded packet can be reported as a multiple of it in the same conditions.

use std::time::Duration;

use greenroom_sfu::io::floor::{Floor, FloorError};

/// Small payload measured (an Opus packet).
pub const SMALL: usize = 100;
/// Large payload measured (a video packet).
pub const LARGE: usize = 1200;

/// The floor at the two payload sizes, CPU nanoseconds per packet.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FloorFigures {
    /// At a 100-byte payload.
    pub ns_small: f64,
    /// At a 1200-byte payload.
    pub ns_large: f64,
}

impl FloorFigures {
    /// The floor for a packet with `payload` bytes: linear between the two measured sizes,
    /// clamped at their values outside.
    pub fn ns_for(&self, payload: f64) -> f64 {
        let f = ((payload - SMALL as f64) / (LARGE - SMALL) as f64).clamp(0.0, 1.0);
        self.ns_small + f * (self.ns_large - self.ns_small)
    }
}

/// Measures both sizes for about `each` of wall time each (blocking: call from a blocking
/// thread).
pub fn measure(each: Duration) -> Result<FloorFigures, FloorError> {
    Ok(FloorFigures {
        ns_small: Floor::new(SMALL)?.measure(each)?,
        ns_large: Floor::new(LARGE)?.measure(each)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolates_between_the_sizes() {
        let f = FloorFigures {
            ns_small: 2000.0,
            ns_large: 3100.0,
        };
        assert_eq!(f.ns_for(50.0), 2000.0);
        assert_eq!(f.ns_for(650.0), 2550.0);
        assert_eq!(f.ns_for(5000.0), 3100.0);
    }

    #[test]
    fn a_short_measurement_gives_a_positive_floor() {
        let f = measure(Duration::from_millis(50));
        assert!(
            f.as_ref()
                .is_ok_and(|f| f.ns_small > 0.0 && f.ns_large > 0.0),
            "{f:?}"
        );
    }
}
