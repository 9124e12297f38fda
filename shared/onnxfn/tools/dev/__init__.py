"""Local stand-ins for the Fn platform: the agent that runs the function under the real fdk, and the gateway."""
