"""Config support for the entry points: OmegaConf resolvers and the option checks run before anything loads."""
