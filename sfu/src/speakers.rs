//! Active speaker detection: audio-level header extension values, averaged per producer over
//! each window, ranked per call; an event is due only when the ranking changes (debounce = one
//! window, 500 ms by default).

/// Audio at or below this linear level (about -50 dBov) is silence.
const SPEAKING_THRESHOLD: f32 = 0.003;

/// Accumulates audio levels of one producer over a window (no allocation per packet).
#[derive(Debug, Clone, Default)]
pub(crate) struct LevelMeter {
    sum: f32,
    count: u32,
}

impl LevelMeter {
    /// Adds one audio-level extension value (`-dBov`, 0 loudest, str0m gives it negated).
    #[inline]
    pub(crate) fn observe(&mut self, audio_level: i8) {
        let db = -f32::from(audio_level.unsigned_abs().min(127));
        self.sum += 10f32.powf(db / 20.0);
        self.count += 1;
    }

    /// The mean linear level (0..1) of the window, and resets it.
    pub(crate) fn take(&mut self) -> f32 {
        let v = if self.count == 0 {
            0.0
        } else {
            self.sum / self.count as f32
        };
        *self = LevelMeter::default();
        v
    }
}

/// Ranks one call's speakers and debounces changes.
#[derive(Debug, Clone, Default)]
pub(crate) struct SpeakerRanking {
    last: Vec<String>,
}

impl SpeakerRanking {
    /// Given each participant's window level, returns the new ranking (loudest first) if the
    /// ordered set of speaking participants changed since the last emitted one.
    pub(crate) fn update(&mut self, mut levels: Vec<(String, f32)>) -> Option<Vec<(String, f32)>> {
        levels.retain(|(_, l)| *l > SPEAKING_THRESHOLD);
        levels.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let ids: Vec<String> = levels.iter().map(|(p, _)| p.clone()).collect();
        if ids == self.last {
            return None;
        }
        self.last = ids;
        Some(levels.into_iter().map(|(p, l)| (p, l.min(1.0))).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meter_and_ranking() {
        let mut loud = LevelMeter::default();
        let mut soft = LevelMeter::default();
        let mut quiet = LevelMeter::default();
        for _ in 0..10 {
            loud.observe(-10);
            soft.observe(-30);
            quiet.observe(-127);
        }
        let (l, s, q) = (loud.take(), soft.take(), quiet.take());
        assert!(l > s && s > q);
        assert_eq!(loud.take(), 0.0, "take resets the window");
        let mut r = SpeakerRanking::default();
        let first = r
            .update(vec![("b".into(), s), ("a".into(), l), ("c".into(), q)])
            .unwrap();
        assert_eq!(
            first.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        // Same order again: debounced.
        assert!(r
            .update(vec![("b".into(), s), ("a".into(), l * 0.9)])
            .is_none());
        // Everyone silent: one empty update, then nothing.
        assert_eq!(r.update(vec![("a".into(), 0.0)]).unwrap(), vec![]);
        assert!(r.update(vec![]).is_none());
    }
}
