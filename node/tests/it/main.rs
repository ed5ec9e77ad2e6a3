//! Integration tests: real `anygate` processes on 127.0.0.1 driven through
//! the real `anygatectl`. One test binary (link time); files `tNN_what.rs`.

mod harness;
mod oidc;
mod webdriver;

mod t01_formation;
mod t02_crash_and_restart;
mod t03_snapshot_membership;
mod t04_concurrent_allocation;
mod t05_bad_input;
mod t06_uapi_wireguard_go;
mod t07_dataplane_netns;
mod t08_bgp;
mod t09_routed;
mod t10_bgp_external;
mod t11_bgp_ipv6;
mod t12_react;
mod t13_security;
mod t14_operations;
mod t15_hundred_thousand;
mod t16_idp;
mod t17_portal;
