public enum NetworkModule {}
