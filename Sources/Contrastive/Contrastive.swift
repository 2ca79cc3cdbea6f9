public enum ContrastiveModule {}
