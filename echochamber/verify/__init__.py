"""Checking generated answers: answer extraction per format, math-verify comparison, and the sandbox
(`sandbox.SandboxPool`) that is the only place generated code ever runs."""
