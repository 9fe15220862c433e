pytest_plugins = ["omnichannel.testing"]
