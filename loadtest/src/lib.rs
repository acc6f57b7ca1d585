//! Greenroom's load tester and WebRTC client bots.
