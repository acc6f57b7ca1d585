//! Greenroom's control plane.
