#[keel::service]
trait Echo {
    async fn echo(&self, text: String) -> String;
    async fn echo(&self, data: Vec<u8>) -> Vec<u8>;
}

fn main() {}
