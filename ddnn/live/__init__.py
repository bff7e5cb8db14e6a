"""The live runtime without PyTorch: the wire protocol, the MQTT client, brokers, and the base
every service builds on."""
