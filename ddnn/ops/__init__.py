"""Running whole deployments: processes and their driver, the demo, fault injection, benches."""
