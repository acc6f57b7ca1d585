//! Post-processing of the SDP str0m writes: where the server's ICE candidates go.
//!
//! str0m puts the local candidates into the first m-section, whatever its state. When that
//! section is rejected (port 0, outside the BUNDLE group, e.g. a first offered track in a codec
//! the server does not forward), clients that ignore rejected sections (RFC 8843 wants the
//! transport attributes in a bundled, accepted section) never see a candidate and ICE fails.
//! [`candidates_in_bundled_section`] moves them into the first accepted section of the BUNDLE
//! group.

/// One m-section (or the session part) as its lines, without line endings.
struct Section<'a> {
    lines: Vec<&'a str>,
}

impl Section<'_> {
    /// The port of the `m=` line (`None` for the session part or a malformed line).
    fn port(&self) -> Option<&str> {
        let m = self.lines.first()?.strip_prefix("m=")?;
        m.split(' ').nth(1)
    }

    fn mid(&self) -> Option<&str> {
        self.lines.iter().find_map(|l| l.strip_prefix("a=mid:"))
    }

    fn rejected(&self) -> bool {
        self.port() == Some("0")
    }
}

/// True for the lines that describe the server's ICE candidates.
fn is_candidate_line(l: &str) -> bool {
    l.starts_with("a=candidate:") || l == "a=end-of-candidates"
}

/// Moves the `a=candidate` (and `a=end-of-candidates`) lines out of rejected m-sections (port
/// 0) into the first accepted m-section named by the BUNDLE group (or, without a group, the
/// first accepted one). Returns the SDP unchanged when no candidate sits in a rejected section
/// or no section is accepted. Lines end with CRLF in the result, as in the input.
pub(crate) fn candidates_in_bundled_section(sdp: &str) -> String {
    let mut sections: Vec<Section<'_>> = vec![Section { lines: Vec::new() }];
    for line in sdp.split("\r\n").filter(|l| !l.is_empty()) {
        if line.starts_with("m=") {
            sections.push(Section { lines: Vec::new() });
        }
        if let Some(s) = sections.last_mut() {
            s.lines.push(line);
        }
    }
    let bundle: Vec<&str> = sections[0]
        .lines
        .iter()
        .find_map(|l| l.strip_prefix("a=group:BUNDLE "))
        .map(|g| g.split(' ').filter(|m| !m.is_empty()).collect())
        .unwrap_or_default();
    let media = &sections[1..];
    let target = media.iter().position(|s| {
        !s.rejected() && (bundle.is_empty() || s.mid().is_some_and(|m| bundle.contains(&m)))
    });
    let misplaced = media
        .iter()
        .any(|s| s.rejected() && s.lines.iter().any(|l| is_candidate_line(l)));
    let Some(target) = target.map(|t| t + 1) else {
        return sdp.to_owned();
    };
    if !misplaced {
        return sdp.to_owned();
    }
    let mut moved: Vec<&str> = Vec::new();
    for s in sections.iter_mut().skip(1).filter(|s| s.rejected()) {
        moved.extend(s.lines.iter().copied().filter(|l| is_candidate_line(l)));
        s.lines.retain(|l| !is_candidate_line(l));
    }
    let dest = &mut sections[target].lines;
    for l in moved {
        if !dest.contains(&l) {
            dest.push(l);
        }
    }
    // `a=end-of-candidates` last, after every candidate.
    if let Some(i) = dest.iter().position(|l| *l == "a=end-of-candidates") {
        let eoc = dest.remove(i);
        dest.push(eoc);
    }
    let mut out = String::with_capacity(sdp.len());
    for l in sections.iter().flat_map(|s| s.lines.iter()) {
        out.push_str(l);
        out.push_str("\r\n");
    }
    out
}

/// The `a=mid` of each m-section, in order (an answer lists its offer's mids in the same order,
/// RFC 8829 §5.3.1).
pub(crate) fn mids(sdp: &str) -> Vec<String> {
    sdp.lines()
        .filter_map(|l| l.trim_end().strip_prefix("a=mid:"))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const REJECTED_FIRST: &str = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
        a=group:BUNDLE 1\r\n\
        m=video 0 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=inactive\r\n\
        a=candidate:1 1 udp 2130706431 127.0.0.1 7882 typ host\r\n\
        a=candidate:2 1 tcp 1518214911 127.0.0.1 7882 typ host tcptype passive\r\n\
        a=end-of-candidates\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=recvonly\r\n\
        a=rtpmap:111 opus/48000/2\r\n";

    #[test]
    fn mids_in_order() {
        assert_eq!(mids(REJECTED_FIRST), ["0", "1"]);
        assert!(mids("v=0\r\n").is_empty());
    }

    /// The lines of the m-section whose mid is `mid` (empty if none).
    fn section<'a>(sdp: &'a str, mid: &str) -> Vec<&'a str> {
        let tag = format!("a=mid:{mid}");
        let mut sections: Vec<Vec<&str>> = vec![Vec::new()];
        for l in sdp.split("\r\n").filter(|l| !l.is_empty()) {
            if l.starts_with("m=") {
                sections.push(Vec::new());
            }
            if let Some(s) = sections.last_mut() {
                s.push(l);
            }
        }
        sections
            .into_iter()
            .skip(1)
            .find(|s| s.contains(&tag.as_str()))
            .unwrap_or_default()
    }

    #[test]
    fn candidates_move_from_a_rejected_first_section_into_the_bundled_one() {
        let out = candidates_in_bundled_section(REJECTED_FIRST);
        let rejected = section(&out, "0");
        let accepted = section(&out, "1");
        assert!(!rejected.iter().any(|l| is_candidate_line(l)), "{out}");
        let cands: Vec<_> = accepted
            .iter()
            .filter(|l| l.starts_with("a=candidate:"))
            .collect();
        assert_eq!(cands.len(), 2, "{out}");
        assert!(cands[1].ends_with("tcptype passive"));
        assert_eq!(accepted.last(), Some(&"a=end-of-candidates"), "{out}");
        assert!(out.ends_with("\r\n"));
        assert!(!out.contains("\r\n\r\n"));
    }

    #[test]
    fn an_sdp_with_candidates_in_an_accepted_first_section_is_unchanged() {
        let sdp = REJECTED_FIRST.replace("m=video 0 ", "m=video 9 ");
        assert_eq!(candidates_in_bundled_section(&sdp), sdp);
    }

    #[test]
    fn all_sections_rejected_leaves_the_sdp_alone() {
        let sdp = REJECTED_FIRST.replace("m=audio 9 ", "m=audio 0 ");
        assert_eq!(candidates_in_bundled_section(&sdp), sdp);
    }

    #[test]
    fn an_accepted_section_outside_the_bundle_group_is_not_chosen() {
        // mid 2 is accepted but outside BUNDLE; mid 1, after it, is accepted and bundled.
        let sdp = REJECTED_FIRST.replace(
            "m=audio 9 ",
            "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:2\r\nm=audio 9 ",
        );
        assert!(section(&sdp, "2")[0].starts_with("m=audio 9 "));
        let out = candidates_in_bundled_section(&sdp);
        assert!(
            !section(&out, "2").iter().any(|l| is_candidate_line(l)),
            "{out}"
        );
        assert!(
            section(&out, "1").iter().any(|l| is_candidate_line(l)),
            "{out}"
        );
    }

    /// The real thing: str0m (the server's configuration) answers an offer whose first m-line
    /// is video in a codec the server does not take (H.265 only) and whose second is Opus.
    #[test]
    fn a_str0m_answer_with_a_rejected_first_line_gets_its_candidate_bundled() {
        use std::time::Instant;
        use str0m::change::SdpOffer;
        let offer = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
            a=group:BUNDLE 0 1\r\na=msid-semantic: WMS\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n\
            a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
            a=fingerprint:sha-256 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:3E:4B:65:2E:7D:46:3F:54:42:CD:54:F1\r\n\
            a=setup:actpass\r\na=mid:0\r\na=sendonly\r\na=rtcp-mux\r\n\
            a=rtpmap:96 H265/90000\r\na=ssrc:1111 cname:x\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n\
            a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
            a=fingerprint:sha-256 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:3E:4B:65:2E:7D:46:3F:54:42:CD:54:F1\r\n\
            a=setup:actpass\r\na=mid:1\r\na=sendonly\r\na=rtcp-mux\r\n\
            a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\na=ssrc:2222 cname:x\r\n";
        let mut rtc = crate::engine::rtc_config(false).build(Instant::now());
        let local = "127.0.0.1:7882".parse().unwrap();
        rtc.add_local_candidate(str0m::Candidate::host(local, "udp").unwrap());
        let answer = rtc
            .sdp_api()
            .accept_offer(SdpOffer::from_sdp_string(offer).unwrap())
            .unwrap()
            .to_sdp_string();
        // The situation this module exists for: str0m rejected mid 0 and put the candidate there.
        assert!(
            section(&answer, "0")[0].starts_with("m=video 0 "),
            "{answer}"
        );
        assert!(
            section(&answer, "0")
                .iter()
                .any(|l| l.starts_with("a=candidate:")),
            "{answer}"
        );
        assert!(rtc.media("0".into()).is_some_and(|m| m.disabled()));
        let fixed = candidates_in_bundled_section(&answer);
        assert!(
            !section(&fixed, "0").iter().any(|l| is_candidate_line(l)),
            "{fixed}"
        );
        assert!(
            section(&fixed, "1")
                .iter()
                .any(|l| l.starts_with("a=candidate:")),
            "{fixed}"
        );
        // Still an SDP str0m itself parses.
        str0m::change::SdpAnswer::from_sdp_string(&fixed).unwrap();
    }
}
