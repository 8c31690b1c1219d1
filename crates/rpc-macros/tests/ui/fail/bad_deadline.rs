#[keel::service]
trait Echo {
    #[deadline(200)]
    async fn echo(&self, text: String) -> String;
}

fn main() {}
