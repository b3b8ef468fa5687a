#![no_std]
// This file exists so that sandbox-agent can name this crate as a build dependency.
