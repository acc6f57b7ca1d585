//! Greenroom's media plane.
