//! TypeScript declarations of every wire type, generated from the Rust types with `ts-rs`.
//!
//! The browser SDK's types (`control/web/sdk/types/wire.d.ts`) are this output, checked in; the
//! test `typescript_bindings_are_current` fails when they drift (set `UPDATE_TS_TYPES=1` to
//! rewrite them).

use ts_rs::{Config, TS};

use crate::*;

/// Appends `export type Name = ...;` with the type's doc comment.
fn push<T: TS + ?Sized>(out: &mut String, cfg: &Config) {
    if let Some(docs) = T::docs() {
        out.push_str(&docs);
    }
    out.push_str("export ");
    out.push_str(&T::decl(cfg));
    out.push_str("\n\n");
}

/// [`push`] for a type whose declaration would repeat another declared type `U` inline (a
/// `#[serde(flatten)]`ed enum, a set that serializes as a list of it): `U`'s inlined body is
/// replaced by its name, so the file spells each union out once.
fn push_naming<T: TS + ?Sized, U: TS + ?Sized>(out: &mut String, cfg: &Config) {
    let mut one = String::new();
    push::<T>(&mut one, cfg);
    let inlined = U::inline(cfg);
    let named = if one.contains(&format!("({inlined})")) {
        one.replace(&format!("({inlined})"), &U::name(cfg))
    } else {
        one.replace(&inlined, &U::name(cfg))
    };
    out.push_str(&named);
}

/// The whole declaration file: every message, event, error code and the types they use.
pub fn typescript_declarations() -> String {
    // JSON numbers: 64-bit integers (milliseconds) are plain `number` on the wire.
    let cfg = Config::new().with_large_int("number");
    let mut out = String::from(
        "// Generated from the Rust types in proto/ by ts-rs. Do not edit: run\n\
         // `UPDATE_TS_TYPES=1 cargo test -p greenroom-proto --lib typescript` after changing them.\n\n",
    );
    let out = &mut out;
    push::<serde_json::Value>(out, &cfg);
    push::<Capability>(out, &cfg);
    push_naming::<CapabilitySet, Capability>(out, &cfg);
    push::<TrackSource>(out, &cfg);
    push::<Role>(out, &cfg);
    push::<CallType>(out, &cfg);
    push::<CallCid>(out, &cfg);
    push::<ErrorCode>(out, &cfg);
    push::<ErrorBody>(out, &cfg);
    push::<Member>(out, &cfg);
    push::<JoinSettings>(out, &cfg);
    push::<Reaction>(out, &cfg);
    push::<TrackInfo>(out, &cfg);
    push::<ParticipantInfo>(out, &cfg);
    push::<CallState>(out, &cfg);
    push::<MuteKinds>(out, &cfg);
    push::<IceServer>(out, &cfg);
    push::<PeerTarget>(out, &cfg);
    push::<PublishTrack>(out, &cfg);
    push::<SubscribedTrack>(out, &cfg);
    push::<Quality>(out, &cfg);
    push::<ClientMessage>(out, &cfg);
    push_naming::<ClientEnvelope, ClientMessage>(out, &cfg);
    push::<SignalMessage>(out, &cfg);
    push::<Reply<ts_rs::Dummy>>(out, &cfg);
    push::<Speaker>(out, &cfg);
    push::<CallEvent>(out, &cfg);
    push::<ServerMessage>(out, &cfg);
    push::<CallKind>(out, &cfg);
    push::<RejectReason>(out, &cfg);
    push::<RingOutcome>(out, &cfg);
    push::<RingPhase>(out, &cfg);
    push::<RingCallInfo>(out, &cfg);
    push::<CallRecord>(out, &cfg);
    push::<RingEvent>(out, &cfg);
    push::<RingClientMessage>(out, &cfg);
    out.push_str(&format!(
        "/** Protocol version announced in `joined.protocol`. */\nexport const PROTOCOL_VERSION: {PROTOCOL_VERSION};\n"
    ));
    out.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked_in() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../control/web/sdk/types/wire.d.ts")
    }

    #[test]
    fn typescript_bindings_are_current() {
        let generated = typescript_declarations();
        let path = checked_in();
        if std::env::var_os("UPDATE_TS_TYPES").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == generated,
            "{} is out of date: run `UPDATE_TS_TYPES=1 cargo test -p greenroom-proto --lib typescript`",
            path.display()
        );
    }

    #[test]
    fn capability_union_lists_every_wire_name() {
        let decl = Capability::decl(&Config::new());
        for c in Capability::ALL {
            assert!(
                decl.contains(&format!("\"{}\"", c.as_str())),
                "{c} missing in {decl}"
            );
        }
        assert_eq!(
            decl.matches('"').count(),
            Capability::ALL.len() * 2,
            "{decl}"
        );
    }

    #[test]
    fn each_union_is_spelled_out_once() {
        let d = typescript_declarations();
        let cfg = Config::new().with_large_int("number");
        assert_eq!(d.matches(&ClientMessage::inline(&cfg)).count(), 1, "{d}");
        assert_eq!(d.matches(&Capability::inline(&cfg)).count(), 1, "{d}");
        assert!(d.contains("} & ClientMessage;"), "{d}");
        assert!(d.contains("CapabilitySet = Array<Capability>;"), "{d}");
    }

    #[test]
    fn integers_are_numbers_not_bigints() {
        let d = typescript_declarations();
        assert!(!d.contains("bigint"), "bigint in the declarations");
        assert!(
            d.contains("joined_at_ms: number"),
            "joined_at_ms is not a number"
        );
    }
}
